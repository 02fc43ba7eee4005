// The server's models: fastText files read with libfasttext. Nothing here knows
// about Asio or HTTP; every function blocks, and the server calls them on its
// compute executor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fasttext {
class FastText;
}

namespace model_server {

/// What a model file says about itself, read from its header without loading it.
struct ModelInfo {
  bool supervised = false;  ///< A classifier (labels and probabilities); otherwise word vectors only.
  int dim = 0;              ///< The length of its sentence vectors.
};

/// Reads the header of a fastText `.bin` file (magic, version, then its training arguments).
///
/// @return The model's kind and dimension; nullopt when the file is missing,
/// short, or not a fastText model of a version this library reads.
std::optional<ModelInfo> read_model_info(const std::filesystem::path& file);

/// One text's answer: its top labels with their probabilities, or its sentence vector.
struct Prediction {
  std::vector<std::string> labels;  ///< Without fastText's `__label__` prefix, most probable first.
  std::vector<float> probabilities;
  std::vector<float> vector;
};

/// A loaded fastText model. Const member functions may run on several threads at once.
class FastTextModel {
 public:
  /// Loads `file`; throws std::runtime_error naming the file and fastText's reason on failure.
  static std::shared_ptr<const FastTextModel> load(const std::filesystem::path& file);

  ~FastTextModel();
  FastTextModel(const FastTextModel&) = delete;
  FastTextModel& operator=(const FastTextModel&) = delete;

  const ModelInfo& info() const noexcept { return info_; }
  int labels() const noexcept { return labels_; }

  /// The `k` most probable labels of `text` (a classifier only; throws std::invalid_argument otherwise).
  Prediction classify(const std::string& text, int k) const;
  /// The sentence vector of `text`, `info().dim` values.
  Prediction embed(const std::string& text) const;

 private:
  FastTextModel();
  std::unique_ptr<fasttext::FastText> ft_;
  ModelInfo info_;
  int labels_ = 0;
};

/// Trains the demo models the server ships without: `sentiment` and `topic`
/// (classifiers) and `embed` (word vectors), from text generated here with a
/// fixed seed. Models already in `dir` are kept.
///
/// @return The names of the models it trained.
std::vector<std::string> train_demo_models(const std::filesystem::path& dir);

}  // namespace model_server
