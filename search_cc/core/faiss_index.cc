// Implementation of the FAISS searcher core (see faiss_index.h).
#include "search_cc/core/faiss_index.h"
#include "search_cc/core/asset_snapshot.h"
#include "search_cc/core/ivf_sq8_scan.h"

#include <cxxabi.h>
#include <errno.h>
#include <omp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include <faiss/Index.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFastScan.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

namespace dpsr {
namespace search {
namespace {

using Code = FaissIndexError::Code;

// FAISS messages span lines ("Error in ... at file:line: Error: ..."); keep them on one.
std::string OneLine(const char* what) {
  std::string s(what == nullptr ? "" : what);
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

std::string TypeName(const std::type_info& info) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.name(), nullptr, nullptr, &status);
  std::string name = (status == 0 && demangled != nullptr) ? demangled : info.name();
  std::free(demangled);
  for (const std::string drop : {"faiss::", "Template<Index>"}) {  // IndexIDMapTemplate<...>
    for (size_t at = name.find(drop); at != std::string::npos; at = name.find(drop)) {
      name.erase(at, drop.size());
    }
  }
  return name;
}

// True when the core searches this node with ivf_sq8_scan.
bool UsesOwnSq8Scan(const faiss::Index* node, bool own_sq8_scan) {
  const auto* sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(node);
  return own_sq8_scan && sq != nullptr && IvfSq8Supported(*sq);
}

std::string Describe(const faiss::Index* index, bool own_sq8_scan) {
  std::string name = TypeName(typeid(*index));
  if (const auto* idmap = dynamic_cast<const faiss::IndexIDMap*>(index)) {
    return name + "(" + Describe(idmap->index, own_sq8_scan) + ")";
  }
  if (const auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    return name + "(" + Describe(pt->index, own_sq8_scan) + ")";
  }
  if (const auto* refine = dynamic_cast<const faiss::IndexRefine*>(index)) {
    return name + "(" + Describe(refine->base_index, own_sq8_scan) + ")";
  }
  if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    return name + "(nlist=" + std::to_string(ivf->nlist) +
           ", nprobe=" + std::to_string(ivf->nprobe) +
           ", quantizer=" + Describe(ivf->quantizer, own_sq8_scan) +
           (UsesOwnSq8Scan(index, own_sq8_scan) ? ", search=dpsr_sq8_scan" : "") + ")";
  }
  if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    return name + "(efSearch=" + std::to_string(hnsw->hnsw.efSearch) + ")";
  }
  return name;
}

// Reads the whole file at `read_path` as a FAISS index; every failure names `path`, the file
// it is a snapshot of.
std::unique_ptr<faiss::Index> ReadIndexFile(const std::string& path, const std::string& read_path,
                                            bool mmap, int64_t file_size) {
  const std::string where = "FAISS index file '" + path + "'";
  try {
    faiss::FileIOReader reader(read_path.c_str());
    const int flags = mmap ? (faiss::IO_FLAG_MMAP | faiss::IO_FLAG_READ_ONLY) : 0;
    std::unique_ptr<faiss::Index> index(faiss::read_index(&reader, flags));
    if (index == nullptr) Fail(Code::kInvalidArgument, where + " holds no index");
    const long end = std::ftell(reader.f);
    if (end > file_size) {  // only possible with mmap, which seeks over the lists
      Fail(Code::kInvalidArgument,
           "cannot read " + where + " (truncated: its inverted lists end at byte " +
               std::to_string(end) + " but the file has " + std::to_string(file_size) +
               " bytes)");
    }
    if (end >= 0 && end != file_size) {
      Fail(Code::kInvalidArgument,
           where + " has " + std::to_string(file_size - end) +
               " unexpected bytes after the index (" + std::to_string(end) + " of " +
               std::to_string(file_size) + " bytes read): not a single FAISS index file");
    }
    return index;
  } catch (const FaissIndexError&) {
    throw;
  } catch (const faiss::FaissException& e) {
    Fail(Code::kInvalidArgument,
         "cannot read " + where + " (truncated, corrupt, or not written by FAISS 1.7.x): " +
             OneLine(e.what()));
  } catch (const std::bad_alloc&) {
    Fail(Code::kInvalidArgument,
         "cannot read " + where + ": out of memory while loading (corrupt sizes, or the index "
         "does not fit in memory; try mmap for IVF indexes)");
  } catch (const std::exception& e) {
    Fail(Code::kInvalidArgument, "cannot read " + where + ": " + OneLine(e.what()));
  }
}

// What makes two loads share one index: the same file contents (device, inode, size, mtime)
// loaded with the same options.
// (device, inode, size, mtime, mmap, own SQ8 scan)
using CacheKey = std::tuple<uint64_t, uint64_t, int64_t, int64_t, bool, bool>;

// DPSR_SQ8_SCAN=faiss makes indexes loaded from now on search IVF-SQ8 with FAISS's own code
// instead of ivf_sq8_scan (same results, more CPU): a switch for comparing the two
// and for ruling the scan out when a search looks wrong. Unset or "dpsr": the scan.
constexpr char kSq8ScanVariable[] = "DPSR_SQ8_SCAN";

bool OwnSq8ScanFromEnvironment() {
  const char* value = std::getenv(kSq8ScanVariable);
  if (value == nullptr || *value == '\0' || std::strcmp(value, "dpsr") == 0) return true;
  if (std::strcmp(value, "faiss") == 0) return false;
  Fail(Code::kInvalidArgument, std::string("environment variable ") + kSq8ScanVariable +
                                   " must be 'dpsr' (the default) or 'faiss', got '" + value +
                                   "'");
}

struct CacheSlot {
  std::mutex mu;  // held while this file is being loaded, so it is loaded once
  std::weak_ptr<const FaissIndex> index;
};

std::mutex& CacheMutex() {
  static std::mutex* mu = new std::mutex;
  return *mu;
}

std::map<CacheKey, std::shared_ptr<CacheSlot>>& Cache() {
  static auto* cache = new std::map<CacheKey, std::shared_ptr<CacheSlot>>;
  return *cache;
}

}  // namespace

struct FaissIndex::Impl {
  std::string path;
  bool mmap = false;
  // With mmap, FAISS maps this snapshot of the file (asset_snapshot.h), never the file at
  // `path`, so changing that file in place cannot fault or change the loaded index. Declared
  // before `index`, which maps its file, so that it outlives the mapping.
  std::unique_ptr<assets::AssetSnapshot> snapshot;
  std::string load_warning;
  std::string metric;
  std::string description;
  bool higher_is_better = true;
  bool own_sq8_scan = true;  // DPSR_SQ8_SCAN at load
  // Declared before the views so that the views (which borrow its inverted lists and
  // quantizer) are destroyed first.
  std::unique_ptr<faiss::Index> index;

  // Shallow copies of IVF-PQ fast-scan nodes with another nprobe: FAISS 1.7.3's
  // IndexIVFFastScan::search takes no SearchParameters, and changing the shared node's nprobe
  // would race with concurrent searches. A view shares the inverted lists and the quantizer
  // and owns neither.
  static constexpr size_t kMaxViews = 16;
  mutable std::mutex views_mu;
  mutable std::map<std::pair<const faiss::Index*, size_t>,
                   std::shared_ptr<const faiss::IndexIVFFastScan>>
      views;

  // FAISS 1.7.3's HNSW search ignores SearchParametersHNSW::efSearch and reads
  // hnsw.efSearch, so a per-call ef_search has to be written there. Each HNSW node has a
  // gate: the value is only changed while no search runs on the node, searches wanting the
  // value currently set run together, and waiters are admitted in arrival order (a steady
  // stream of one value cannot starve another). Every HNSW search goes through the gate.
  class KnobGate {
   public:
    explicit KnobGate(int initial) : default_(initial), current_(initial) {}
    int default_value() const { return default_; }

    void Enter(int* knob, int value) {
      std::unique_lock<std::mutex> lock(mu_);
      if (waiting_.empty() && (active_ == 0 || value == current_)) {
        Admit(knob, value);
        return;
      }
      const uint64_t ticket = next_ticket_++;
      waiting_.emplace(ticket, value);
      cv_.wait(lock, [&] {
        return waiting_.begin()->first == ticket && (active_ == 0 || value == current_);
      });
      waiting_.erase(waiting_.begin());
      Admit(knob, value);
      cv_.notify_all();  // the next waiter may join this value
    }

    void Leave() {
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0) cv_.notify_all();
    }

   private:
    void Admit(int* knob, int value) {
      if (value != current_) {  // only when active_ == 0: no search reads the knob now
        *knob = value;
        current_ = value;
      }
      ++active_;
    }

    const int default_;
    std::mutex mu_;
    std::condition_variable cv_;
    int active_ = 0;
    int current_;
    uint64_t next_ticket_ = 0;
    std::map<uint64_t, int> waiting_;  // ticket -> wanted value, oldest first
  };
  std::map<const faiss::IndexHNSW*, std::unique_ptr<KnobGate>> gates;  // fixed after Load

  void AddGates(const faiss::Index* node) {
    if (const auto* idmap = dynamic_cast<const faiss::IndexIDMap*>(node)) {
      AddGates(idmap->index);
    } else if (const auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(node)) {
      AddGates(pt->index);
    } else if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(node)) {
      AddGates(ivf->quantizer);
    } else if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(node)) {
      gates.emplace(hnsw, std::make_unique<KnobGate>(hnsw->hnsw.efSearch));
    }
  }

  class EfSearchScope {
   public:
    EfSearchScope(const Impl& impl, const faiss::IndexHNSW* hnsw, int64_t ef_search) {
      auto it = impl.gates.find(hnsw);
      if (it == impl.gates.end()) return;  // not reachable from the root: leave it alone
      gate_ = it->second.get();
      const int value = ef_search > 0 ? static_cast<int>(ef_search) : gate_->default_value();
      gate_->Enter(&const_cast<faiss::IndexHNSW*>(hnsw)->hnsw.efSearch, value);
    }
    ~EfSearchScope() {
      if (gate_ != nullptr) gate_->Leave();
    }
    EfSearchScope(const EfSearchScope&) = delete;
    EfSearchScope& operator=(const EfSearchScope&) = delete;

   private:
    KnobGate* gate_ = nullptr;
  };

  std::shared_ptr<const faiss::IndexIVFFastScan> FastScanView(
      const faiss::IndexIVFFastScan* node, size_t nprobe) const {
    if (typeid(*node) != typeid(faiss::IndexIVFPQFastScan)) {
      Fail(Code::kFailedPrecondition,
           "per-call nprobe is not supported for " + TypeName(typeid(*node)) +
               " in FAISS 1.7.3 (index '" + path + "'); pass nprobe=0 to use the index's own "
               "nprobe (" + std::to_string(node->nprobe) + ")");
    }
    std::lock_guard<std::mutex> lock(views_mu);
    const auto key = std::make_pair(static_cast<const faiss::Index*>(node), nprobe);
    auto it = views.find(key);
    if (it != views.end()) return it->second;
    if (views.size() >= kMaxViews) views.clear();  // in-flight searches keep their view alive
    auto view = std::make_shared<faiss::IndexIVFPQFastScan>(
        *static_cast<const faiss::IndexIVFPQFastScan*>(node));
    view->own_invlists = false;
    view->own_fields = false;
    view->nprobe = nprobe;
    views.emplace(key, view);
    return view;
  }

  // Searches `node` with the per-call knobs, unwrapping the wrappers that would otherwise
  // refuse SearchParameters in FAISS 1.7.3 (IndexIDMap) or hide a fast-scan node.
  void SearchNode(const faiss::Index* node, int64_t n, const float* x,
                  const SearchParams& p, float* distances, int64_t* labels) const {
    const bool knobs = p.nprobe > 0 || p.ef_search > 0;
    if (const auto* idmap = dynamic_cast<const faiss::IndexIDMap*>(node)) {
      SearchNode(idmap->index, n, x, p, distances, labels);
      const auto& ids = idmap->id_map;
      for (int64_t i = 0; i < n * p.k; ++i) {
        if (labels[i] < 0) continue;
        if (labels[i] >= static_cast<int64_t>(ids.size())) {
          Fail(Code::kInternal, "index '" + path + "': label " + std::to_string(labels[i]) +
                                    " outside its IndexIDMap id_map");
        }
        labels[i] = ids[labels[i]];
      }
      return;
    }
    if (const auto* pt = dynamic_cast<const faiss::IndexPreTransform*>(node)) {
      const float* xt = pt->apply_chain(n, x);
      std::unique_ptr<const float[]> owned(xt == x ? nullptr : xt);
      SearchNode(pt->index, n, xt, p, distances, labels);
      return;
    }
    if (const auto* fs = dynamic_cast<const faiss::IndexIVFFastScan*>(node)) {
      const size_t nprobe =
          p.nprobe > 0 ? std::min<size_t>(static_cast<size_t>(p.nprobe), fs->nlist) : fs->nprobe;
      if (nprobe == fs->nprobe) {
        fs->search(n, x, p.k, distances, labels);
      } else {
        FastScanView(fs, nprobe)->search(n, x, p.k, distances, labels);
      }
      return;
    }
    if (UsesOwnSq8Scan(node, own_sq8_scan)) {  // the `auto` default: the faster scan
      const auto* sq = static_cast<const faiss::IndexIVFScalarQuantizer*>(node);
      SearchIvfSq8(*sq, n, x, p.k,
                   p.nprobe > 0 ? static_cast<size_t>(p.nprobe) : sq->nprobe, distances,
                   labels);
      return;
    }
    if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(node)) {
      faiss::SearchParametersIVF params;
      params.nprobe = std::min<size_t>(
          p.nprobe > 0 ? static_cast<size_t>(p.nprobe) : ivf->nprobe, ivf->nlist);
      params.max_codes = ivf->max_codes;
      if (const auto* q = dynamic_cast<const faiss::IndexHNSW*>(ivf->quantizer)) {
        EfSearchScope scope(*this, q, p.ef_search);
        ivf->search(n, x, p.k, distances, labels, &params);
      } else {
        ivf->search(n, x, p.k, distances, labels, &params);
      }
      return;
    }
    if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(node)) {
      EfSearchScope scope(*this, hnsw, p.ef_search);
      hnsw->search(n, x, p.k, distances, labels);
      return;
    }
    if (const auto* rf = dynamic_cast<const faiss::IndexRefine*>(node)) {
      if (!knobs) {
        rf->search(n, x, p.k, distances, labels);
      } else {
        SearchRefine(rf, n, x, p, distances, labels);
      }
      return;
    }
    node->search(n, x, p.k, distances, labels);  // no per-call knob for this type
  }

  // IndexRefine with per-call knobs. FAISS 1.7.3's IndexRefine::search takes no
  // SearchParameters, so this does what it does with the base searched through SearchNode:
  // k * k_factor candidates from the base index, their distances recomputed with the refine
  // index's codes, the best k kept (ties by smaller label).
  void SearchRefine(const faiss::IndexRefine* rf, int64_t n, const float* x,
                    const SearchParams& p, float* distances, int64_t* labels) const {
    const int64_t k_base =
        std::max<int64_t>(p.k, static_cast<int64_t>(static_cast<double>(p.k) * rf->k_factor));
    std::vector<float> base_d(static_cast<size_t>(n * k_base));
    std::vector<int64_t> base_l(static_cast<size_t>(n * k_base));
    SearchParams base_p = p;
    base_p.k = k_base;
    SearchNode(rf->base_index, n, x, base_p, base_d.data(), base_l.data());
    const bool higher_better = rf->metric_type == faiss::METRIC_INNER_PRODUCT;
    std::unique_ptr<faiss::DistanceComputer> dc(rf->refine_index->get_distance_computer());
    std::vector<int64_t> order;
    for (int64_t i = 0; i < n; ++i) {
      float* bd = base_d.data() + i * k_base;
      const int64_t* bl = base_l.data() + i * k_base;
      dc->set_query(x + i * rf->d);
      int64_t m = 0;
      for (; m < k_base && bl[m] >= 0; ++m) bd[m] = (*dc)(bl[m]);
      order.resize(static_cast<size_t>(m));
      for (int64_t j = 0; j < m; ++j) order[j] = j;
      const int64_t keep = std::min(m, p.k);
      std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                        [&](int64_t a, int64_t b) {
                          if (bd[a] != bd[b]) return higher_better ? bd[a] > bd[b] : bd[a] < bd[b];
                          return bl[a] < bl[b];
                        });
      for (int64_t j = 0; j < p.k; ++j) {
        distances[i * p.k + j] = j < keep ? bd[order[j]] : 0.0f;
        labels[i * p.k + j] = j < keep ? bl[order[j]] : -1;
      }
    }
  }
};

FaissIndex::FaissIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FaissIndex::~FaissIndex() = default;

const std::string& FaissIndex::path() const { return impl_->path; }
bool FaissIndex::mmap() const { return impl_->mmap; }
const std::string& FaissIndex::snapshot_file() const {
  static const std::string* none = new std::string;
  return impl_->snapshot != nullptr ? impl_->snapshot->file() : *none;
}
const std::string& FaissIndex::load_warning() const { return impl_->load_warning; }
int64_t FaissIndex::dimension() const { return impl_->index->d; }
int64_t FaissIndex::size() const { return impl_->index->ntotal; }
bool FaissIndex::higher_is_better() const { return impl_->higher_is_better; }
const std::string& FaissIndex::metric() const { return impl_->metric; }
const std::string& FaissIndex::description() const { return impl_->description; }

std::shared_ptr<const FaissIndex> FaissIndex::Load(const std::string& path,
                                                   const LoadOptions& options) {
  if (path.empty()) Fail(Code::kInvalidArgument, "FAISS index path is empty");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      Fail(Code::kNotFound, "FAISS index file not found: '" + path + "'");
    }
    Fail(Code::kInvalidArgument,
         "cannot open FAISS index file '" + path + "': " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    Fail(Code::kInvalidArgument, "FAISS index path '" + path + "' is not a regular file");
  }
  if (st.st_size == 0) {
    Fail(Code::kInvalidArgument, "FAISS index file '" + path + "' is empty");
  }
  const int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                           st.st_mtim.tv_nsec;
  const CacheKey key(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                     static_cast<int64_t>(st.st_size), mtime_ns, options.mmap,
                     OwnSq8ScanFromEnvironment());

  std::shared_ptr<CacheSlot> slot;
  {
    std::lock_guard<std::mutex> lock(CacheMutex());
    auto& cache = Cache();
    for (auto it = cache.begin(); it != cache.end();) {  // forget indexes nobody holds
      if (it->first != key && it->second.use_count() == 1 && it->second->index.expired()) {
        it = cache.erase(it);
      } else {
        ++it;
      }
    }
    auto& entry = cache[key];
    if (entry == nullptr) entry = std::make_shared<CacheSlot>();
    slot = entry;
  }
  std::lock_guard<std::mutex> slot_lock(slot->mu);
  if (auto existing = slot->index.lock()) return existing;

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->mmap = options.mmap;
  impl->own_sq8_scan = std::get<5>(key);
  if (options.mmap) {
    // An AssetSnapshotError is this core's CoreError: it propagates with its own code.
    impl->snapshot = assets::AssetSnapshot::Take(
        path, "FAISS index file", assets::AssetSnapshot::Mode::kSharedFile, /*map_file=*/false);
    impl->load_warning = impl->snapshot->fallback_reason();
  }
  if (impl->snapshot != nullptr && !impl->snapshot->file().empty()) {
    impl->index = ReadIndexFile(path, impl->snapshot->file(), /*mmap=*/true,
                                static_cast<int64_t>(impl->snapshot->size()));
  } else {  // read into memory: a private copy, whatever happens to the file later
    impl->mmap = false;
    impl->index = ReadIndexFile(path, path, /*mmap=*/false, static_cast<int64_t>(st.st_size));
  }
  const faiss::Index& index = *impl->index;
  if (index.d <= 0 || index.ntotal < 0) {
    Fail(Code::kInvalidArgument, "FAISS index file '" + path + "' has dimension " +
                                     std::to_string(index.d) + " and " +
                                     std::to_string(index.ntotal) + " vectors");
  }
  if (!index.is_trained) {
    Fail(Code::kInvalidArgument,
         "FAISS index file '" + path + "' holds an untrained index: train it before writing");
  }
  switch (index.metric_type) {
    case faiss::METRIC_INNER_PRODUCT:
      impl->metric = "inner_product";
      impl->higher_is_better = true;
      break;
    case faiss::METRIC_L2:
      impl->metric = "l2";
      impl->higher_is_better = false;
      break;
    default:
      impl->metric = "metric_" + std::to_string(static_cast<int>(index.metric_type));
      impl->higher_is_better = false;
  }
  impl->description = Describe(impl->index.get(), impl->own_sq8_scan);
  impl->AddGates(impl->index.get());
  std::shared_ptr<const FaissIndex> loaded(new FaissIndex(std::move(impl)));
  slot->index = loaded;
  return loaded;
}

void FaissIndex::Search(int64_t n, int64_t dim, const float* queries,
                        const SearchParams& params, float* scores, int64_t* labels) const {
  auto where = [this] { return " (FAISS index '" + impl_->path + "')"; };
  if (n < 0) Fail(Code::kInvalidArgument, "negative number of queries " + std::to_string(n));
  if (dim != dimension()) {
    Fail(Code::kInvalidArgument, "queries have dimension " + std::to_string(dim) +
                                     " but the index has dimension " +
                                     std::to_string(dimension()) + where());
  }
  if (params.k < 1 || params.k > kMaxK) {
    Fail(Code::kInvalidArgument, "k must be in [1, " + std::to_string(kMaxK) + "], got " +
                                     std::to_string(params.k) + where());
  }
  if (params.nprobe < 0 || params.nprobe > kMaxKnob) {
    Fail(Code::kInvalidArgument, "nprobe must be in [0, " + std::to_string(kMaxKnob) +
                                     "] (0 = index default), got " +
                                     std::to_string(params.nprobe) + where());
  }
  if (params.ef_search < 0 || params.ef_search > kMaxKnob) {
    Fail(Code::kInvalidArgument, "ef_search must be in [0, " + std::to_string(kMaxKnob) +
                                     "] (0 = index default), got " +
                                     std::to_string(params.ef_search) + where());
  }
  if (n == 0) return;
  const float pad = impl_->higher_is_better ? -std::numeric_limits<float>::infinity()
                                            : std::numeric_limits<float>::infinity();
  if (size() == 0) {  // nothing to find (an empty shard); FAISS HNSW has no entry point
    std::fill(scores, scores + n * params.k, pad);
    std::fill(labels, labels + n * params.k, int64_t{-1});
    return;
  }
  for (int64_t i = 0; i < n * dim; ++i) {
    if (!std::isfinite(queries[i])) {
      Fail(Code::kInvalidArgument, "query " + std::to_string(i / dim) + " has a non-finite value " +
                                       std::to_string(queries[i]) + " at column " +
                                       std::to_string(i % dim) + where());
    }
  }
  // Small batches search on the calling thread: FAISS parallelizes over queries, so a team
  // of OpenMP threads would idle (and spin) for them. omp_set_num_threads sets this thread's
  // value only; TF's own threads run concurrent requests anyway.
  const int threads_before = omp_get_max_threads();
  const bool serial = n < kParallelBatch;
  if (serial) omp_set_num_threads(1);
  struct RestoreThreads {
    int value;
    bool active;
    ~RestoreThreads() {
      if (active) omp_set_num_threads(value);
    }
  } restore{threads_before, serial};
  try {
    impl_->SearchNode(impl_->index.get(), n, queries, params, scores, labels);
  } catch (const FaissIndexError&) {
    throw;
  } catch (const faiss::FaissException& e) {
    Fail(Code::kInternal, "FAISS search failed" + where() + ": " + OneLine(e.what()));
  } catch (const std::bad_alloc&) {
    Fail(Code::kInternal, "out of memory searching " + std::to_string(n) + " queries with k=" +
                              std::to_string(params.k) + where());
  } catch (const std::exception& e) {
    Fail(Code::kInternal, "FAISS search failed" + where() + ": " + OneLine(e.what()));
  }
  for (int64_t i = 0; i < n * params.k; ++i) {
    if (labels[i] < 0) {
      labels[i] = -1;
      scores[i] = pad;
    }
  }
}

}  // namespace search
}  // namespace dpsr
