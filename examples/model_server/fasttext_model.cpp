#include "fasttext_model.hpp"

#include <fasttext/fasttext.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string_view>

namespace model_server {
namespace {

constexpr std::int32_t fasttext_magic = 793712314;  // fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
constexpr std::string_view label_prefix = "__label__";

// fastText reads a line up to '\n'; a text is one line.
std::istringstream one_line(const std::string& text) {
  std::string line = text;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return std::istringstream(line + '\n');
}

}  // namespace

std::optional<ModelInfo> read_model_info(const std::filesystem::path& file) {
  // The header is the magic, the format version, then Args::save's fields:
  // dim, ws, epoch, minCount, neg, wordNgrams, loss, model, ...
  std::ifstream in(file, std::ios::binary);
  std::array<std::int32_t, 10> header{};
  if (!in.read(reinterpret_cast<char*>(header.data()), sizeof header)) return std::nullopt;
  if (header[0] != fasttext_magic || header[1] > 12) return std::nullopt;
  const int dim = header[2];
  const int model = header[9];
  if (dim <= 0 || model < 1 || model > 3) return std::nullopt;
  return ModelInfo{model == static_cast<int>(fasttext::model_name::sup), dim};
}

FastTextModel::FastTextModel() : ft_(std::make_unique<fasttext::FastText>()) {}
FastTextModel::~FastTextModel() = default;

std::shared_ptr<const FastTextModel> FastTextModel::load(const std::filesystem::path& file) {
  std::shared_ptr<FastTextModel> model(new FastTextModel());
  try {
    if (!std::filesystem::is_regular_file(file)) throw std::runtime_error("no such file");
    model->ft_->loadModel(file.string());
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot load " + file.filename().string() + ": " + e.what());
  }
  const fasttext::Args args = model->ft_->getArgs();
  model->info_ = ModelInfo{args.model == fasttext::model_name::sup, model->ft_->getDimension()};
  model->labels_ = model->ft_->getDictionary()->nlabels();
  return model;
}

Prediction FastTextModel::classify(const std::string& text, int k) const {
  if (!info_.supervised) throw std::invalid_argument("this model has no labels: ask for the output \"vector\"");
  auto in = one_line(text);
  std::vector<std::pair<fasttext::real, std::string>> found;
  ft_->predictLine(in, found, k, 0.0);
  Prediction p;
  for (auto& [probability, label] : found) {
    std::string_view name = label;
    if (name.starts_with(label_prefix)) name.remove_prefix(label_prefix.size());
    p.labels.emplace_back(name);
    // fastText's exp(log p) comes out a hair above 1 for a sure label.
    p.probabilities.push_back(std::clamp(static_cast<float>(probability), 0.0f, 1.0f));
  }
  return p;
}

Prediction FastTextModel::embed(const std::string& text) const {
  auto in = one_line(text);
  fasttext::Vector v(info_.dim);
  ft_->getSentenceVector(in, v);
  Prediction p;
  p.vector.assign(v.data(), v.data() + v.size());
  return p;
}

namespace {

struct Corpus {
  std::string name;
  std::vector<std::pair<std::string, std::vector<std::string>>> classes;  // label, words of its sentences
};

// Sentences of a few words, most from the class's own vocabulary and some
// shared, so that the classifiers learn something a curl line can check.
void write_corpus(const Corpus& corpus, const std::filesystem::path& file, bool labelled, std::mt19937& rng) {
  static const std::vector<std::string> shared = {"the",    "a",     "this", "it",   "was", "is", "and", "very",
                                                  "really", "today", "we",   "they", "i",   "my", "our"};
  std::ofstream out(file);
  for (int line = 0; line < 6000; ++line) {
    const auto& [label, words] = corpus.classes[line % corpus.classes.size()];
    std::uniform_int_distribution<std::size_t> pick_own(0, words.size() - 1), pick_shared(0, shared.size() - 1);
    std::uniform_int_distribution<int> length(4, 10), coin(0, 2);
    if (labelled) out << label_prefix << label << ' ';
    for (int w = length(rng); w > 0; --w)
      out << (coin(rng) == 0 ? shared[pick_shared(rng)] : words[pick_own(rng)]) << ' ';
    out << '\n';
  }
}

}  // namespace

std::vector<std::string> train_demo_models(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const Corpus sentiment{"sentiment",
                         {{"positive",
                           {"good", "great", "excellent", "wonderful", "love", "loved", "happy", "fantastic", "best",
                            "enjoyed", "brilliant", "perfect", "delightful", "superb", "recommend"}},
                          {"negative",
                           {"bad", "terrible", "awful", "hate", "hated", "boring", "worst", "poor", "disappointing",
                            "broken", "horrible", "waste", "dull", "annoying", "refund"}}}};
  const Corpus topic{"topic",
                     {{"sports", {"match", "goal", "team", "player", "score", "league", "coach", "season", "win"}},
                      {"food", {"pizza", "pasta", "soup", "recipe", "cheese", "bread", "dinner", "spicy", "taste"}},
                      {"tech", {"computer", "software", "server", "code", "compiler", "network", "chip", "linux"}},
                      {"weather", {"rain", "sunny", "storm", "cloud", "wind", "snow", "forecast", "cold", "warm"}}}};

  std::vector<std::string> trained;
  std::mt19937 rng(20261201);
  auto train = [&](const std::string& name, const Corpus& corpus, bool supervised) {
    const auto model_file = dir / (name + ".bin");
    if (std::filesystem::exists(model_file)) return;
    const auto text = dir / (name + ".train.txt");
    write_corpus(corpus, text, supervised, rng);
    fasttext::Args args;
    args.input = text.string();
    args.output = (dir / name).string();
    args.model = supervised ? fasttext::model_name::sup : fasttext::model_name::sg;
    args.loss = supervised ? fasttext::loss_name::softmax : fasttext::loss_name::ns;
    args.dim = supervised ? 16 : 32;
    args.epoch = supervised ? 10 : 5;
    args.lr = supervised ? 0.5 : 0.05;
    args.minCount = 1;
    args.wordNgrams = supervised ? 2 : 1;
    args.minn = supervised ? 0 : 3;
    args.maxn = supervised ? 0 : 5;
    args.bucket = supervised ? 20000 : 20000;  // fastText's default (2 M rows) would make a 100 MB file
    args.thread = 1;
    args.verbose = 0;
    fasttext::FastText ft;
    ft.train(args);
    // Written whole under another name, then renamed: a server reading the
    // directory never sees half a model.
    const auto partial = dir / (name + ".bin.partial");
    ft.saveModel(partial.string());
    std::filesystem::rename(partial, model_file);
    std::filesystem::remove(text);
    trained.push_back(name);
  };
  train("sentiment", sentiment, true);
  train("topic", topic, true);
  Corpus all{"embed", {}};
  for (const auto& c : {sentiment, topic}) all.classes.insert(all.classes.end(), c.classes.begin(), c.classes.end());
  train("embed", all, false);
  return trained;
}

}  // namespace model_server
