// Unit tests of OverlongString (exit status 0 = pass). The requests are the bytes Python's
// protocol buffers serialized (tensorflow_serving PredictRequest; the merged value by hand,
// checked to parse as noted); the messages are the server's (model_server/api/predict.py).
#include "front_end_cc/string_limit.h"

#include <string>
#include <string_view>
#include <vector>

#include "tests/cc/check.h"

namespace {

using dpsr::front_end::kMaxFields;
using dpsr::front_end::OverlongString;
using dpsr::front_end::Pieces;

// model dpsr; query ["abc", "0123456789"] (DT_STRING, shape [2]); k 5 (DT_INT32)
const std::string kTwoQueries("\x0a\x06\x0a\x04\x64\x70\x73\x72\x12\x0a\x0a\x01\x6b\x12\x05\x08\x03\x3a\x01\x05\x12\x22\x0a\x05\x71\x75\x65\x72\x79\x12\x19\x08\x07\x12\x04\x12\x02\x08\x02\x42\x03\x61\x62\x63\x42\x0a\x30\x31\x32\x33\x34\x35\x36\x37\x38\x39", 56);
// query ["01234567"]; k 5
const std::string kAtTheLimit("\x0a\x06\x0a\x04\x64\x70\x73\x72\x12\x0a\x0a\x01\x6b\x12\x05\x08\x03\x3a\x01\x05\x12\x1b\x0a\x05\x71\x75\x65\x72\x79\x12\x12\x08\x07\x12\x04\x12\x02\x08\x01\x42\x08\x30\x31\x32\x33\x34\x35\x36\x37", 49);
// query ["short"]
const std::string kShortFirst("\x0a\x06\x0a\x04\x64\x70\x73\x72\x12\x18\x0a\x05\x71\x75\x65\x72\x79\x12\x0f\x08\x07\x12\x04\x12\x02\x08\x01\x42\x05\x73\x68\x6f\x72\x74", 34);
// query ["0123456789"]
const std::string kLongFirst("\x0a\x06\x0a\x04\x64\x70\x73\x72\x12\x1d\x0a\x05\x71\x75\x65\x72\x79\x12\x14\x08\x07\x12\x04\x12\x02\x08\x01\x42\x0a\x30\x31\x32\x33\x34\x35\x36\x37\x38\x39", 39);
// ids: DT_INT32 with string_val ["0123456789"] (not a string input)
const std::string kIntWithStrings("\x0a\x06\x0a\x04\x64\x70\x73\x72\x12\x1b\x0a\x03\x69\x64\x73\x12\x14\x08\x03\x12\x04\x12\x02\x08\x01\x42\x0a\x30\x31\x32\x33\x34\x35\x36\x37\x38\x39", 37);
// one 'query' entry whose value comes twice: {dtype 7, ["a"]} then {["0123456789"]}; parses to
// dtype DT_STRING, string_val ["a", "0123456789"]
const std::string kValueTwice("\x12\x1c\x0a\x05\x71\x75\x65\x72\x79\x12\x05\x08\x07\x42\x01\x61\x12\x0c\x42\x0a\x30\x31\x32\x33\x34\x35\x36\x37\x38\x39", 30);

std::string Refusal(const std::string& alias, int index, int bytes, int limit) {
  return "input '" + alias + "'[" + std::to_string(index) + "] is " + std::to_string(bytes) +
         " bytes; the limit is " + std::to_string(limit) +
         " (--max_string_input_bytes); send shorter text";
}

void TestTheFirstLongStringIsNamedAsTheServerNamesIt() {
  CHECK(OverlongString(kTwoQueries, 8) == Refusal("query", 1, 10, 8));
  CHECK(OverlongString(kTwoQueries, 3) == Refusal("query", 1, 10, 3));
  CHECK(OverlongString(kTwoQueries, 2) == Refusal("query", 0, 3, 2));
  CHECK(OverlongString(kTwoQueries, 10).empty());
  CHECK(OverlongString(kLongFirst, 9) == Refusal("query", 0, 10, 9));
}

void TestAtTheLimitOrOffPasses() {
  CHECK(OverlongString(kAtTheLimit, 8).empty());
  CHECK(OverlongString(kAtTheLimit, 7) == Refusal("query", 0, 8, 7));
  CHECK(OverlongString(kLongFirst, 0).empty());  // 0: no limit
  CHECK(OverlongString(kLongFirst, kLongFirst.size()).empty());  // no string can be longer
}

void TestOnlyStringInputsAreChecked() {
  CHECK(OverlongString(kIntWithStrings, 8).empty());
}

void TestALaterEntryReplacesAnEarlierOne() {
  CHECK(OverlongString(kLongFirst + kShortFirst, 8).empty());
  CHECK(OverlongString(kShortFirst + kLongFirst, 8) == Refusal("query", 0, 10, 8));
}

void TestAValueGivenTwiceIsMerged() {
  CHECK(OverlongString(kValueTwice, 8) == Refusal("query", 1, 10, 8));
}

void TestWhatDoesNotParseIsLeftToTheServer() {
  CHECK(OverlongString(kLongFirst.substr(0, kLongFirst.size() - 1), 8).empty());
  CHECK(OverlongString(std::string(40, '\xff'), 8).empty());
  CHECK(OverlongString(kLongFirst + std::string("\x0b", 1), 8).empty());  // a group's start
}

// Wire helpers for the bounded cases (too large to list as bytes).
std::string Varint(size_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string Delimited(int field, const std::string& payload) {
  return Varint(static_cast<size_t>(field) << 3 | 2) + Varint(payload.size()) + payload;
}
std::string StringInput(const std::string& alias, size_t short_strings,
                        const std::string& last) {
  std::string tensor = "\x08\x07";  // dtype DT_STRING
  for (size_t i = 0; i < short_strings; ++i) tensor += Delimited(8, "a");
  tensor += Delimited(8, last);
  return Delimited(2, Delimited(1, alias) + Delimited(2, tensor));
}

void TestLongListsAreLeftToTheServer() {
  const std::string last(10, 'z');
  CHECK(OverlongString(StringInput("query", kMaxFields - 1, last), 8) ==
        Refusal("query", static_cast<int>(kMaxFields - 1), 10, 8));
  CHECK(OverlongString(StringInput("query", kMaxFields, last), 8).empty());
  std::string filters;  // output_filter (field 3) entries ahead of the input
  for (size_t i = 0; i < kMaxFields; ++i) filters += Delimited(3, "x");
  CHECK(OverlongString(filters.substr(0, filters.size() - 3) + StringInput("q", 0, last), 8) ==
        Refusal("q", 0, 10, 8));
  CHECK(OverlongString(filters + StringInput("q", 0, last), 8).empty());
}

// `request` as gRPC may hold it: in pieces of `size` bytes, an empty piece after every
// `empty_every`-th one (0: none).
Pieces InPieces(const std::string& request, size_t size, size_t empty_every) {
  std::vector<std::string_view> pieces;
  const std::string_view all(request);
  for (size_t at = 0, n = 0; at < all.size(); at += size) {
    pieces.push_back(all.substr(at, size));
    if (empty_every != 0 && ++n % empty_every == 0) pieces.push_back(std::string_view());
  }
  return Pieces(pieces);
}

void TestARequestInPiecesReadsAsInOne() {
  const std::string last(10, 'z');
  const struct {
    std::string request;
    size_t limit;
    std::string refusal;
  } cases[] = {
      {kTwoQueries, 8, Refusal("query", 1, 10, 8)},
      {kTwoQueries, 2, Refusal("query", 0, 3, 2)},
      {kTwoQueries, 10, ""},
      {kAtTheLimit, 7, Refusal("query", 0, 8, 7)},
      {kIntWithStrings, 8, ""},
      {kLongFirst + kShortFirst, 8, ""},
      {kShortFirst + kLongFirst, 8, Refusal("query", 0, 10, 8)},
      {kValueTwice, 8, Refusal("query", 1, 10, 8)},
      {kLongFirst.substr(0, kLongFirst.size() - 1), 8, ""},
      {StringInput("a long alias", 300, last), 8, Refusal("a long alias", 300, 10, 8)},
  };
  for (const auto& c : cases) {
    CHECK(OverlongString(c.request, c.limit) == c.refusal);
    for (size_t size : {1, 2, 3, 5, 7, 16, 1000}) {
      for (size_t empty_every : {0, 1, 3}) {
        CHECK(OverlongString(InPieces(c.request, size, empty_every), c.limit) == c.refusal);
      }
    }
  }
  CHECK(OverlongString(Pieces({}), 8).empty());
  CHECK(OverlongString(Pieces({std::string_view(), std::string_view(kLongFirst),
                               std::string_view()}), 8) == Refusal("query", 0, 10, 8));
}

}  // namespace

int main() {
  TestTheFirstLongStringIsNamedAsTheServerNamesIt();
  TestAtTheLimitOrOffPasses();
  TestOnlyStringInputsAreChecked();
  TestALaterEntryReplacesAnEarlierOne();
  TestAValueGivenTwiceIsMerged();
  TestWhatDoesNotParseIsLeftToTheServer();
  TestLongListsAreLeftToTheServer();
  TestARequestInPiecesReadsAsInOne();
  return dpsr_test::Report("string_limit_test");
}
