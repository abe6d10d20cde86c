// A Predict request whose string input holds an element longer than the server's
// --max_string_input_bytes is refused by the front end, with the server's own message
// (dpsr_tf/serving/model_server/api/predict.py), instead of handed to the Python server (or
// the proxy) to be parsed and refused there: a burst of 4 MiB queries cost the Python side's
// event loop about 2-4 ms each (docs/benchmarks.md, "Misbehaving clients").
//
// The lengths are read from the request's protocol buffer wire bytes where gRPC holds them (in
// the pieces it read them in: none joined, no string copied), as protocol buffers parse them:
// PredictRequest.inputs is a map, so a later entry with the same key replaces an earlier one,
// and a TensorProto given twice in one entry is merged (its strings follow the first's, its
// dtype is the last one given). Only inputs whose dtype is DT_STRING are
// checked, as the server checks string inputs. The walk is bounded: a request of more than
// kMaxFields top-level fields, or an input of more than kMaxFields strings or other fields, is
// left to the server (so is anything that does not parse here); nothing is ever refused that
// the server would run.
//
// Standard C++ only, header-only as the gate's other rules, unit-tested (string_limit_test.cc).
#ifndef DPSR_FRONT_END_CC_STRING_LIMIT_H_
#define DPSR_FRONT_END_CC_STRING_LIMIT_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dpsr {
namespace front_end {

// Fields read at most: top-level fields of a request, strings of an input, other fields of it.
constexpr size_t kMaxFields = 4096;

// A request's bytes as gRPC holds them: in order, in one piece or many (a large request arrives
// in many read buffers). Read in place: nothing is joined.
class Pieces {
 public:
  explicit Pieces(std::vector<std::string_view> pieces) : pieces_(std::move(pieces)) {
    starts_.reserve(pieces_.size());
    for (const auto& p : pieces_) {
      starts_.push_back(size_);
      size_ += p.size();
    }
  }
  size_t size() const { return size_; }

  // The piece holding byte `pos` (< size()), searched from `hint` onwards (reads move forward).
  size_t PieceOf(size_t pos, size_t hint) const {
    for (size_t i = hint; i < hint + 2 && i < pieces_.size(); ++i) {  // this piece or the next
      if (pos >= starts_[i] && pos - starts_[i] < pieces_[i].size()) return i;
    }
    // The last piece starting at or before `pos` (an empty piece shares its start with the next).
    return static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), pos) -
                               starts_.begin()) - 1;
  }
  unsigned char At(size_t pos, size_t* hint) const {
    *hint = PieceOf(pos, *hint);
    return static_cast<unsigned char>(pieces_[*hint][pos - starts_[*hint]]);
  }
  // Bytes [begin, end) copied out (a map key: short, or bounded by the request).
  std::string Copy(size_t begin, size_t end) const {
    std::string out;
    out.reserve(end - begin);
    size_t hint = 0;
    while (begin < end) {
      hint = PieceOf(begin, hint);
      const std::string_view p = pieces_[hint].substr(begin - starts_[hint]);
      const size_t n = std::min(p.size(), end - begin);
      out.append(p.data(), n);
      begin += n;
    }
    return out;
  }

 private:
  std::vector<std::string_view> pieces_;
  std::vector<size_t> starts_;
  size_t size_ = 0;
};

namespace string_limit_internal {

// PredictRequest.inputs; its map entries' key and value; TensorProto.dtype and string_val.
constexpr uint64_t kInputs = 2, kKey = 1, kValue = 2, kDtype = 1, kStringVal = 8;
constexpr uint64_t kDtString = 7;
constexpr int kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

// One field: its number, wire type, the varint's value or where its payload lies.
struct Field {
  uint64_t number = 0;
  int wire_type = 0;
  uint64_t value = 0;
  size_t begin = 0, end = 0;  // the payload: bytes [begin, end) of the request
  size_t size() const { return end - begin; }
};

// Reads the fields of one message, bytes [begin, end) of the request, in turn; false at its
// end or at bytes that do not parse here (then `failed` is set).
class Fields {
 public:
  Fields(const Pieces& bytes, size_t begin, size_t end) : bytes_(bytes), at_(begin), end_(end) {}

  bool Next(Field* f) {
    if (at_ >= end_ || failed) return false;
    uint64_t key = 0;
    if (!Varint(&key)) return Fail();
    f->number = key >> 3;
    f->wire_type = static_cast<int>(key & 7);
    switch (f->wire_type) {
      case kVarint:
        return Varint(&f->value) || Fail();
      case kFixed64:
      case kFixed32: {
        const size_t n = f->wire_type == kFixed64 ? 8 : 4;
        if (end_ - at_ < n) return Fail();
        at_ += n;
        return true;
      }
      case kLengthDelimited: {
        uint64_t n = 0;
        if (!Varint(&n) || n > end_ - at_) return Fail();
        f->begin = at_;
        f->end = at_ + static_cast<size_t>(n);
        at_ = f->end;
        return true;
      }
      default:  // groups, or not protocol buffers: the server decides
        return Fail();
    }
  }

  bool failed = false;

 private:
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at_ >= end_) return false;
      const unsigned char byte = bytes_.At(at_++, &hint_);
      *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (byte < 0x80) return true;
    }
    return false;
  }
  bool Fail() {
    failed = true;
    return false;
  }

  const Pieces& bytes_;
  size_t at_, end_;
  size_t hint_ = 0;
};

// What one input's entries tell: its dtype and its strings' lengths, or nothing (not read).
struct Input {
  uint64_t dtype = 0;
  std::optional<std::vector<size_t>> lengths = std::vector<size_t>();
};

// Adds one TensorProto's dtype and string lengths to `input`; false when it is not to be read.
inline bool ReadTensor(const Pieces& bytes, const Field& tensor, Input* input, size_t* others) {
  Fields fields(bytes, tensor.begin, tensor.end);
  Field f;
  while (fields.Next(&f)) {
    if (f.number == kDtype && f.wire_type == kVarint) {
      input->dtype = f.value;
    } else if (f.number == kStringVal && f.wire_type == kLengthDelimited) {
      input->lengths->push_back(f.size());
    }
    if (f.number != kStringVal) ++*others;
    if (input->lengths->size() > kMaxFields || *others > kMaxFields) return false;
  }
  return !fields.failed;
}

}  // namespace string_limit_internal

// The server's refusal of `request` (a serialized PredictRequest, in gRPC's pieces) for its
// first string longer than `max_bytes`, e.g. "input 'query'[0] is 5000 bytes; the limit is
// 4096 (--max_string_input_bytes); send shorter text"; "" when there is none, or when the
// request is left to the server (see above).
inline std::string OverlongString(const Pieces& request, size_t max_bytes) {
  if (max_bytes == 0 || request.size() <= max_bytes) return "";
  namespace sl = string_limit_internal;
  std::map<std::string, sl::Input> inputs;
  sl::Fields fields(request, 0, request.size());
  sl::Field f;
  size_t read = 0;
  while (fields.Next(&f)) {
    if (++read > kMaxFields) return "";
    if (f.number != sl::kInputs || f.wire_type != sl::kLengthDelimited) continue;
    std::string key;
    sl::Input input;
    size_t others = 0;
    sl::Fields entry(request, f.begin, f.end);
    sl::Field e;
    while (entry.Next(&e)) {
      if (e.number == sl::kKey && e.wire_type == sl::kLengthDelimited) {
        key = request.Copy(e.begin, e.end);
      } else if (e.number == sl::kValue && e.wire_type == sl::kLengthDelimited &&
                 input.lengths && !sl::ReadTensor(request, e, &input, &others)) {
        input.lengths.reset();
      }
    }
    if (entry.failed) return "";
    inputs[key] = std::move(input);  // a later entry with this key replaces it
  }
  if (fields.failed) return "";
  for (const auto& [alias, input] : inputs) {
    if (input.dtype != sl::kDtString || !input.lengths) continue;
    for (size_t i = 0; i < input.lengths->size(); ++i) {
      const size_t n = (*input.lengths)[i];
      if (n > max_bytes) {
        return "input '" + alias + "'[" + std::to_string(i) + "] is " + std::to_string(n) +
               " bytes; the limit is " + std::to_string(max_bytes) +
               " (--max_string_input_bytes); send shorter text";
      }
    }
  }
  return "";
}

// The same for a request in one piece.
inline std::string OverlongString(std::string_view request, size_t max_bytes) {
  return OverlongString(Pieces({request}), max_bytes);
}

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_CC_STRING_LIMIT_H_
