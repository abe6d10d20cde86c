// Unit tests of the lexical index core against hand-worked BM25 values (exit status 0 = pass).
#include "search_cc/core/lexical_index.h"

#include <dirent.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::lexical::Bm25Params;
using dpsr::lexical::CorpusStats;
using dpsr::lexical::LexicalIndex;
using dpsr::lexical::LexicalIndexError;
using dpsr::lexical::RaggedIds;
using dpsr::lexical::SearchParams;


bool Near(double a, double b) { return std::fabs(a - b) < 1e-5; }

RaggedIds Ragged(const std::vector<int64_t>& values, const std::vector<int64_t>& splits) {
  RaggedIds r;
  r.values = values.data();
  r.num_values = static_cast<int64_t>(values.size());
  r.row_splits = splits.data();
  r.num_rows = static_cast<int64_t>(splits.size()) - 1;
  return r;
}

template <typename Fn>
LexicalIndexError::Code ErrorOf(Fn&& fn, std::string* message = nullptr) {
  try {
    fn();
  } catch (const LexicalIndexError& e) {
    if (message != nullptr) *message = e.what();
    return e.code();
  }
  std::fprintf(stderr, "expected a LexicalIndexError\n");
  ++dpsr_test::Failures();
  return LexicalIndexError::Code::kInternal;
}

std::string TempPath(const char* name) {
  return std::string("/tmp/dpsr_lexical_test_") + std::to_string(getpid()) + "_" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// Corpus: d0 = [1, 2, 2], d1 = [2, 3], d2 = [4]. N = 3, avgdl = 2, k1 = 1.5, b = 0.75.
const std::vector<int64_t> kValues = {1, 2, 2, 2, 3, 4};
const std::vector<int64_t> kSplits = {0, 3, 5, 6};

void TestHandWorkedScores() {
  const RaggedIds docs = Ragged(kValues, kSplits);
  const CorpusStats stats = CorpusStats::Compute(docs);
  CHECK(stats.num_docs == 3 && stats.DocFreq(2) == 2 && stats.DocFreq(4) == 1 &&
        stats.DocFreq(9) == 0);
  const std::string path = TempPath("hand.lex");
  dpsr::lexical::WriteIndex(path, docs, stats, Bm25Params());
  auto index = LexicalIndex::Load(path);
  CHECK(index->num_docs() == 3 && index->num_terms() == 4 && index->num_postings() == 5);
  CHECK(LexicalIndex::Load(path) == index);  // one copy per file and process

  // Query [2, 4, 7]: term 2 (df 2) and 4 (df 1); 7 is unknown.
  const double idf2 = std::log(1 + (3 - 2 + 0.5) / (2 + 0.5));
  const double idf4 = std::log(1 + (3 - 1 + 0.5) / (1 + 0.5));
  const double d0 = idf2 * 2 / (2 + 1.5 * (0.25 + 0.75 * 3 / 2.0));
  const double d1 = idf2 * 1 / (1 + 1.5 * (0.25 + 0.75 * 2 / 2.0));
  const double d2 = idf4 * 1 / (1 + 1.5 * (0.25 + 0.75 * 1 / 2.0));
  std::vector<int64_t> q = {2, 4, 7};
  std::vector<int64_t> qs = {0, 3, 3};  // second query is empty
  std::vector<float> scores(2 * 4);
  std::vector<int64_t> labels(2 * 4);
  SearchParams params;
  params.k = 4;
  index->Search(Ragged(q, qs), params, scores.data(), labels.data());
  // d2 (0.5062) > d0 (0.2314) > d1 (0.1880)
  CHECK(labels[0] == 2 && labels[1] == 0 && labels[2] == 1 && labels[3] == -1);
  CHECK(Near(scores[0], d2) && Near(scores[1], d0) && Near(scores[2], d1));
  CHECK(std::isinf(scores[3]) && scores[3] < 0);
  for (int j = 4; j < 8; ++j) CHECK(labels[j] == -1);

  params.min_score = 0.2f;  // drops d1
  index->Search(Ragged(q, qs), params, scores.data(), labels.data());
  CHECK(labels[0] == 2 && labels[1] == 0 && labels[2] == -1);

  std::vector<float> all(2 * 3);
  index->ScoreAll(Ragged(q, qs), all.data());
  CHECK(Near(all[0], d0) && Near(all[1], d1) && Near(all[2], d2) && all[3] == 0 && all[5] == 0);

  // A shard (d1, d2) written with the whole corpus's statistics scores as the whole index.
  const std::vector<int64_t> shard_values = {2, 3, 4};
  const std::vector<int64_t> shard_splits = {0, 2, 3};
  const std::string shard_path = TempPath("shard.lex");
  dpsr::lexical::WriteIndex(shard_path, Ragged(shard_values, shard_splits), stats, Bm25Params());
  auto shard = LexicalIndex::Load(shard_path);
  params.min_score = 0.0f;
  params.k = 2;
  index = nullptr;
  shard->Search(Ragged(q, {0, 3}), params, scores.data(), labels.data());
  CHECK(labels[0] == 1 && labels[1] == 0 && Near(scores[0], d2) && Near(scores[1], d1));
  std::remove(path.c_str());
  std::remove(shard_path.c_str());
}

void TestDamagedFiles() {
  const RaggedIds docs = Ragged(kValues, kSplits);
  const std::string path = TempPath("good.lex");
  dpsr::lexical::WriteIndex(path, docs, CorpusStats::Compute(docs), Bm25Params());
  const std::string good = ReadAll(path);
  std::string message;

  CHECK(ErrorOf([&] { LexicalIndex::Load(TempPath("missing.lex")); }) ==
        LexicalIndexError::Code::kNotFound);
  const std::string bad = TempPath("bad.lex");
  WriteAll(bad, good.substr(0, good.size() - 9));
  CHECK(ErrorOf([&] { LexicalIndex::Load(bad); }, &message) ==
        LexicalIndexError::Code::kInvalidArgument);
  CHECK(message.find(bad) != std::string::npos && message.find("truncated") != std::string::npos);
  WriteAll(bad, good + "x");
  CHECK(ErrorOf([&] { LexicalIndex::Load(bad); }, &message) ==
        LexicalIndexError::Code::kInvalidArgument);
  CHECK(message.find("trailing") != std::string::npos);
  std::string flipped = good;
  flipped[good.size() - 12] ^= 0x5a;  // inside the postings
  WriteAll(bad, flipped);
  CHECK(ErrorOf([&] { LexicalIndex::Load(bad); }, &message) ==
        LexicalIndexError::Code::kInvalidArgument);
  CHECK(message.find("checksum") != std::string::npos);
  WriteAll(bad, "");
  CHECK(ErrorOf([&] { LexicalIndex::Load(bad); }) == LexicalIndexError::Code::kInvalidArgument);
  WriteAll(bad, std::string(200, 'z'));
  CHECK(ErrorOf([&] { LexicalIndex::Load(bad); }, &message) ==
        LexicalIndexError::Code::kInvalidArgument);
  CHECK(message.find("magic") != std::string::npos);
  CHECK(ErrorOf([&] { LexicalIndex::Load("/tmp"); }) == LexicalIndexError::Code::kInvalidArgument);
  std::remove(bad.c_str());

  // Bad requests.
  auto index = LexicalIndex::Load(path);
  std::vector<float> scores(4);
  std::vector<int64_t> labels(4);
  std::vector<int64_t> q = {2};
  SearchParams params;
  params.k = 0;
  CHECK(ErrorOf([&] { index->Search(Ragged(q, {0, 1}), params, scores.data(), labels.data()); }) ==
        LexicalIndexError::Code::kInvalidArgument);
  params.k = 1;
  CHECK(ErrorOf([&] { index->Search(Ragged(q, {0, 2}), params, scores.data(), labels.data()); }) ==
        LexicalIndexError::Code::kInvalidArgument);
  CHECK(ErrorOf([&] { index->Search(Ragged(q, {1, 1}), params, scores.data(), labels.data()); }) ==
        LexicalIndexError::Code::kInvalidArgument);
  params.min_score = NAN;
  CHECK(ErrorOf([&] { index->Search(Ragged(q, {0, 1}), params, scores.data(), labels.data()); }) ==
        LexicalIndexError::Code::kInvalidArgument);
  std::vector<int64_t> many(LexicalIndex::kMaxQueryTerms + 1, 2);
  params.min_score = 0;
  CHECK(ErrorOf([&] {
          index->Search(Ragged(many, {0, static_cast<int64_t>(many.size())}), params,
                        scores.data(), labels.data());
        }) == LexicalIndexError::Code::kInvalidArgument);
  // Bad build input: a shard term missing from the statistics, bad BM25 parameters.
  const std::vector<int64_t> other = {99};
  CHECK(ErrorOf([&] {
          dpsr::lexical::WriteIndex(bad, Ragged(other, {0, 1}), CorpusStats::Compute(docs),
                                    Bm25Params());
        }) == LexicalIndexError::Code::kInvalidArgument);
  CHECK(ErrorOf([&] {
          dpsr::lexical::WriteIndex(bad, docs, CorpusStats::Compute(docs), Bm25Params{1.2f, 1.5f});
        }) == LexicalIndexError::Code::kInvalidArgument);
  std::remove(path.c_str());
}

int CountSnapshots(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// A loaded index searches its snapshot: truncating the file, or writing other bytes over it in
// place, changes nothing; the snapshot file goes with the last holder. Without a usable cache
// directory the snapshot is private memory, with a warning, and behaves the same.
void TestInPlaceChangesAfterLoad() {
  const RaggedIds docs = Ragged(kValues, kSplits);
  const std::string path = TempPath("inplace.lex");
  const std::string cache = TempPath("cache");
  const std::string not_a_dir = TempPath("not_a_dir");
  WriteAll(not_a_dir, "x");
  for (const std::string& dir : {cache, not_a_dir + "/cache"}) {
    setenv("DPSR_ASSET_CACHE_DIR", dir.c_str(), 1);
    dpsr::lexical::WriteIndex(path, docs, CorpusStats::Compute(docs), Bm25Params());
    const std::string bytes = ReadAll(path);
    auto index = LexicalIndex::Load(path);
    const bool shared = dir == cache;
    CHECK(shared == !index->snapshot_file().empty());
    CHECK(shared == index->load_warning().empty());
    if (shared) CHECK(CountSnapshots(cache) == 1);
    std::vector<int64_t> q = {2, 4};
    SearchParams params;
    params.k = 3;
    std::vector<float> want_scores(3), scores(3);
    std::vector<int64_t> want_labels(3), labels(3);
    index->Search(Ragged(q, {0, 2}), params, want_scores.data(), want_labels.data());
    CHECK(want_labels[0] == 2 && want_labels[1] == 0 && want_labels[2] == 1);
    // In place (same inode): truncated, emptied, then other bytes of the same size.
    for (const std::string& other : {bytes.substr(0, bytes.size() / 2), std::string(),
                                     std::string(bytes.size(), '\xff')}) {
      std::FILE* f = std::fopen(path.c_str(), "r+b");
      CHECK(f != nullptr && ftruncate(fileno(f), 0) == 0);
      CHECK(std::fwrite(other.data(), 1, other.size(), f) == other.size());
      std::fclose(f);
      index->Search(Ragged(q, {0, 2}), params, scores.data(), labels.data());
      CHECK(labels == want_labels && scores == want_scores);
    }
    index = nullptr;  // the last holder: its snapshot file goes
    CHECK(CountSnapshots(cache) == 0);
    std::remove(path.c_str());
  }
  unsetenv("DPSR_ASSET_CACHE_DIR");
  rmdir(cache.c_str());
  std::remove(not_a_dir.c_str());
}

}  // namespace

int main() {
  TestHandWorkedScores();
  TestDamagedFiles();
  TestInPlaceChangesAfterLoad();
  return dpsr_test::Report("lexical_index_test");
}
