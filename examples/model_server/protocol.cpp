#include "protocol.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <stdexcept>

namespace model_server {
namespace json = boost::json;

namespace {

constexpr const char* known_outputs[] = {"labels", "probabilities", "vector"};

// An integer of `v`, or nullopt when it is not one that fits.
std::optional<std::int64_t> integer(const json::value& v) {
  boost::system::error_code ec;
  const auto n = v.to_number<std::int64_t>(ec);
  if (ec || !(v.is_int64() || v.is_uint64())) return std::nullopt;
  return n;
}

// Reads `parameters`, when there is one; KServe lets a request carry others, which are ignored.
std::string read_parameters(const json::object& body, RequestParameters& out) {
  const json::value* p = body.if_contains("parameters");
  if (!p) return {};
  if (!p->is_object()) return "\"parameters\" must be an object";
  const json::object& params = p->get_object();
  if (const json::value* t = params.if_contains("timeout")) {
    const auto us = integer(*t);
    // A day at most: longer would overflow the clock's nanoseconds long before it meant anything.
    if (!us || *us <= 0 || *us > 86'400'000'000) {
      return "\"parameters.timeout\" must be a positive integer of microseconds, at most a day";
    }
    out.timeout = std::chrono::microseconds(*us);
  }
  if (const json::value* pr = params.if_contains("priority")) {
    const auto level = integer(*pr);
    if (!level || *level < 0 || *level > 1000)
      return "\"parameters.priority\" must be a priority level (0 is the highest)";
    out.priority = static_cast<unsigned>(*level);
  }
  if (const json::value* k = params.if_contains("top_k")) {
    const auto top = integer(*k);
    if (!top || *top < 1 || *top > 100) return "\"parameters.top_k\" must be an integer between 1 and 100";
    out.top_k = static_cast<int>(*top);
  }
  return {};
}

Parsed<json::object> parse_object(std::string_view body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) return {std::nullopt, "malformed JSON: " + ec.message()};
  if (!v.is_object()) return {std::nullopt, "the request body must be a JSON object"};
  return {std::move(v.get_object()), {}};
}

// `data` holds the texts: flat, or nested as the shape says ([[...]] for [n, 1]).
std::string collect_texts(const json::value& data, std::vector<std::string>& texts) {
  if (data.is_string()) {
    texts.emplace_back(data.get_string());
    return {};
  }
  if (!data.is_array()) return "an input's \"data\" must hold strings (datatype BYTES)";
  for (const json::value& item : data.get_array()) {
    if (auto error = collect_texts(item, texts); !error.empty()) return error;
  }
  return {};
}

json::array floats(const std::vector<float>& values) {
  json::array a;
  a.reserve(values.size());
  for (float f : values) a.emplace_back(static_cast<double>(f));
  return a;
}

}  // namespace

Parsed<ParsedInfer> parse_infer(std::string_view body) {
  auto object = parse_object(body);
  if (!object.value) return {std::nullopt, object.error};
  const json::object& req = *object.value;
  ParsedInfer out;
  if (const json::value* id = req.if_contains("id")) {
    if (!id->is_string()) return {std::nullopt, "\"id\" must be a string"};
    out.id = std::string(id->get_string());
  }
  const json::value* inputs = req.if_contains("inputs");
  if (!inputs || !inputs->is_array() || inputs->get_array().size() != 1) {
    return {std::nullopt, "\"inputs\" must be an array of one input (the texts, datatype BYTES)"};
  }
  const json::value& input = inputs->get_array()[0];
  if (!input.is_object()) return {std::nullopt, "an input must be an object"};
  const json::object& in = input.get_object();
  const json::value* datatype = in.if_contains("datatype");
  if (!datatype || !datatype->is_string() || datatype->get_string() != "BYTES") {
    return {std::nullopt, "the input's \"datatype\" must be \"BYTES\""};
  }
  const json::value* shape = in.if_contains("shape");
  if (!shape || !shape->is_array() || shape->get_array().empty()) {
    return {std::nullopt, "the input's \"shape\" must be an array of dimensions"};
  }
  std::int64_t elements = 1;
  for (const json::value& d : shape->get_array()) {
    const auto n = integer(d);
    if (!n || *n < 0 || *n > 1'000'000) {
      return {std::nullopt, "the input's \"shape\" must hold integers from 0 to 1000000"};
    }
    elements *= *n;
    if (elements > 1'000'000) return {std::nullopt, "the input's \"shape\" is too large"};
  }
  const json::value* data = in.if_contains("data");
  if (!data) return {std::nullopt, "the input has no \"data\""};
  if (auto error = collect_texts(*data, out.request.texts); !error.empty()) return {std::nullopt, error};
  if (static_cast<std::int64_t>(out.request.texts.size()) != elements) {
    return {std::nullopt, "the input's \"data\" holds " + std::to_string(out.request.texts.size()) +
                              " texts, its \"shape\" says " + std::to_string(elements)};
  }
  if (out.request.texts.empty()) return {std::nullopt, "the input holds no text"};
  if (auto error = read_parameters(req, out.parameters); !error.empty()) return {std::nullopt, error};
  out.request.top_k = out.parameters.top_k;
  if (const json::value* outputs = req.if_contains("outputs")) {
    if (!outputs->is_array()) return {std::nullopt, "\"outputs\" must be an array"};
    for (const json::value& o : outputs->get_array()) {
      const json::value* name = o.is_object() ? o.get_object().if_contains("name") : nullptr;
      if (!name || !name->is_string()) return {std::nullopt, "each of \"outputs\" must be an object with a \"name\""};
      const std::string n(name->get_string());
      if (std::find(std::begin(known_outputs), std::end(known_outputs), n) == std::end(known_outputs)) {
        return {std::nullopt, "unknown output \"" + n + "\" (labels, probabilities or vector)"};
      }
      out.request.outputs.push_back(n);
    }
  }
  return {std::move(out), {}};
}

Parsed<ParsedInfer> parse_generate(std::string_view body) {
  auto object = parse_object(body);
  if (!object.value) return {std::nullopt, object.error};
  const json::object& req = *object.value;
  const json::value* text = req.if_contains("text_input");
  if (!text || !text->is_string()) return {std::nullopt, "\"text_input\" must be a string"};
  ParsedInfer out;
  std::string_view rest = text->get_string();
  while (!rest.empty()) {
    const auto end = rest.find('\n');
    std::string_view line = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) out.request.texts.emplace_back(line);
  }
  if (out.request.texts.empty()) return {std::nullopt, "\"text_input\" holds no line of text"};
  if (auto error = read_parameters(req, out.parameters); !error.empty()) return {std::nullopt, error};
  out.request.top_k = out.parameters.top_k;
  return {std::move(out), {}};
}

std::vector<std::string> default_outputs(const ModelInfo& info) {
  if (info.supervised) return {"labels", "probabilities"};
  return {"vector"};
}

InferResponse predict(const FastTextModel& model, const InferRequest& request) {
  InferResponse response;
  response.outputs = request.outputs.empty() ? default_outputs(model.info()) : request.outputs;
  const bool wants_labels =
      std::any_of(response.outputs.begin(), response.outputs.end(), [](const std::string& o) { return o != "vector"; });
  const bool wants_vector =
      std::find(response.outputs.begin(), response.outputs.end(), "vector") != response.outputs.end();
  if (wants_labels && !model.info().supervised) {
    throw std::invalid_argument("this model has no labels: ask for the output \"vector\"");
  }
  // Every row gets the same number of labels (the shape is [n, k]); a text of
  // no known word gets fewer from fastText, and is padded.
  const int width = std::min(request.top_k, model.labels());
  response.rows.reserve(request.texts.size());
  for (const std::string& text : request.texts) {
    Prediction row;
    if (wants_labels) {
      row = model.classify(text, width);
      row.labels.resize(static_cast<std::size_t>(width));
      row.probabilities.resize(static_cast<std::size_t>(width), 0.0f);
    }
    if (wants_vector) row.vector = model.embed(text).vector;
    response.rows.push_back(std::move(row));
  }
  return response;
}

std::string infer_response_json(const std::string& model, const std::string& id, const InferResponse& response) {
  json::object body;
  body["model_name"] = model;
  body["model_version"] = "1";
  if (!id.empty()) body["id"] = id;
  json::array outputs;
  const auto n = static_cast<std::int64_t>(response.rows.size());
  for (const std::string& name : response.outputs) {
    json::object out;
    out["name"] = name;
    json::array data;
    std::int64_t width = 0;
    for (const Prediction& row : response.rows) {
      if (name == "labels") {
        width = static_cast<std::int64_t>(row.labels.size());
        for (const auto& l : row.labels) data.emplace_back(l);
      } else if (name == "probabilities") {
        width = static_cast<std::int64_t>(row.probabilities.size());
        for (float p : row.probabilities) data.emplace_back(static_cast<double>(p));
      } else {
        width = static_cast<std::int64_t>(row.vector.size());
        for (float v : row.vector) data.emplace_back(static_cast<double>(v));
      }
    }
    out["datatype"] = name == "labels" ? "BYTES" : "FP32";
    out["shape"] = json::array{n, width};
    out["data"] = std::move(data);
    outputs.emplace_back(std::move(out));
  }
  body["outputs"] = std::move(outputs);
  return json::serialize(body);
}

std::string stream_event_json(const std::string& model, std::size_t index, const std::string& text,
                              const InferResponse& response) {
  json::object event;
  event["model_name"] = model;
  event["index"] = index;
  event["text"] = text;
  if (!response.rows.empty()) {
    const Prediction& row = response.rows.front();
    for (const std::string& name : response.outputs) {
      if (name == "labels") {
        json::array labels;
        for (const auto& l : row.labels) labels.emplace_back(l);
        event["labels"] = std::move(labels);
      } else if (name == "probabilities") {
        event["probabilities"] = floats(row.probabilities);
      } else {
        event["vector"] = floats(row.vector);
      }
    }
  }
  return json::serialize(event);
}

std::string error_json(std::string_view message) {
  json::object body;
  body["error"] = message;
  return json::serialize(body);
}

bool valid_model_name(std::string_view name) {
  if (name.empty() || name.size() > 128 || name.front() == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '.';
  });
}

}  // namespace model_server
