// The Open Inference Protocol (KServe v2) as this server speaks it: requests
// parsed from JSON into what the pool serves, answers written back. Boost.JSON
// only; no Asio, no HTTP.
#pragma once

#include "fasttext_model.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace model_server {

/// What one worker serves: the texts of one HTTP request.
struct InferRequest {
  std::vector<std::string> texts;
  int top_k = 1;                     ///< Labels per text (parameters.top_k).
  std::vector<std::string> outputs;  ///< Output names asked for; empty: the model's own (see default_outputs).
};

/// A worker's answer: one row per text, in order.
struct InferResponse {
  std::vector<std::string> outputs;  ///< The outputs answered, in the order asked.
  std::vector<Prediction> rows;      ///< Every row has the same number of labels.
};

/// What a request's `parameters` carry onto the pool (coropool::SubmitOptions).
struct RequestParameters {
  std::optional<std::chrono::microseconds> timeout;  ///< `timeout`, in microseconds (Triton's unit).
  std::optional<unsigned> priority;                  ///< `priority`: 0 the highest.
  int top_k = 1;                                     ///< `top_k`: labels per text, 1 to 100.
};

/// A request parsed, or why it cannot be (the text of a 400).
template <class T>
struct Parsed {
  std::optional<T> value;
  std::string error;
};

struct ParsedInfer {
  InferRequest request;
  RequestParameters parameters;
  std::string id;  ///< Echoed back when the request had one.
};

/// Parses the body of `POST /v2/models/{name}/infer`: one input of datatype
/// BYTES whose data are the texts, `parameters` and `outputs` optional.
Parsed<ParsedInfer> parse_infer(std::string_view body);

/// Parses the body of `POST /v2/models/{name}/generate_stream`: `text_input`,
/// one text per non-empty line, and `parameters`.
Parsed<ParsedInfer> parse_generate(std::string_view body);

/// The outputs a model answers with when none are asked for: labels and
/// probabilities for a classifier, the sentence vector otherwise.
std::vector<std::string> default_outputs(const ModelInfo& info);

/// Answers one request with `model`: throws std::invalid_argument when an
/// output asked for is one the model has not (labels of a vector model).
InferResponse predict(const FastTextModel& model, const InferRequest& request);

/// The JSON body of an infer answer.
std::string infer_response_json(const std::string& model, const std::string& id, const InferResponse& response);

/// The JSON of one Server-Sent Event of generate_stream: text `index` answered.
std::string stream_event_json(const std::string& model, std::size_t index, const std::string& text,
                              const InferResponse& response);

/// `{"error": message}`.
std::string error_json(std::string_view message);

/// Whether `name` can name a model file: letters, digits, `_`, `-`, `.`, not
/// starting with `.` (so never a path, nor `..`), at most 128 characters.
bool valid_model_name(std::string_view name);

}  // namespace model_server
