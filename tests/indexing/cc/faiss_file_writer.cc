// Test helper: builds a FAISS index with the FAISS the op library links (tools/build_faiss.py),
// writes it, and writes its own search results, so a test can check that the faiss-cpu wheel
// reads the file and answers the same (index files are interchangeable in both directions).
//
//   faiss_file_writer FACTORY DIM ITEMS.f32 QUERIES.f32 K NPROBE K_FACTOR OUT.faiss OUT_LABELS.i64
//
// ITEMS/QUERIES: raw little-endian float32 rows of DIM; metric inner product. K_FACTOR > 0 sets
// the IndexRefine k_factor. Exit status 0 on success; a message on stderr otherwise.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <faiss/IVFlib.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexRefine.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

namespace {

std::vector<float> ReadFloats(const std::string& path, int dim) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::streamsize bytes = in.tellg();
  if (bytes % (sizeof(float) * dim) != 0) throw std::runtime_error(path + ": not rows of DIM");
  std::vector<float> out(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(out.data()), bytes);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) {
    std::cerr << "usage: " << argv[0]
              << " FACTORY DIM ITEMS QUERIES K NPROBE K_FACTOR OUT_INDEX OUT_LABELS\n";
    return 2;
  }
  try {
    const std::string factory = argv[1];
    const int dim = std::atoi(argv[2]);
    const std::vector<float> items = ReadFloats(argv[3], dim);
    const std::vector<float> queries = ReadFloats(argv[4], dim);
    const int k = std::atoi(argv[5]);
    const int nprobe = std::atoi(argv[6]);
    const float k_factor = std::atof(argv[7]);
    const int64_t n = items.size() / dim, nq = queries.size() / dim;
    std::unique_ptr<faiss::Index> index(
        faiss::index_factory(dim, factory.c_str(), faiss::METRIC_INNER_PRODUCT));
    // As `dpsr index` (index_builder.disable_polysemous_training): no polysemous codebook
    // reordering for 8-bit PQ codes, which only Hamming-filtered search needs and costs ~25 s.
    auto no_polysemous = [](faiss::Index* node) {
      if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(node)) {
        ivfpq->do_polysemous_training = false;
      }
      if (auto* pq = dynamic_cast<faiss::IndexPQ*>(node)) pq->do_polysemous_training = false;
    };
    if (auto* rf = dynamic_cast<faiss::IndexRefine*>(index.get())) {
      no_polysemous(rf->base_index);
      no_polysemous(rf->refine_index);
    } else {
      no_polysemous(index.get());
    }
    index->train(n, items.data());
    index->add(n, items.data());
    faiss::Index* base = index.get();
    if (auto* rf = dynamic_cast<faiss::IndexRefine*>(index.get())) {
      if (k_factor > 0) rf->k_factor = k_factor;
      base = rf->base_index;
    }
    if (auto* ivf = faiss::ivflib::try_extract_index_ivf(base)) ivf->nprobe = nprobe;
    faiss::write_index(index.get(), argv[8]);
    std::vector<float> distances(nq * k);
    std::vector<faiss::Index::idx_t> labels(nq * k);
    index->search(nq, queries.data(), k, distances.data(), labels.data());
    std::ofstream out(argv[9], std::ios::binary);
    out.write(reinterpret_cast<const char*>(labels.data()), labels.size() * sizeof(labels[0]));
    if (!out) throw std::runtime_error(std::string("cannot write ") + argv[9]);
  } catch (const std::exception& e) {
    std::cerr << "faiss_file_writer: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
