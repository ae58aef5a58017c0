// Which blocks of every request a decode benchmark or tuning cache keeps as fp16 pool pages, the
// others being records: an engine keeps block 0 (the format's sink) in the pool for the request's
// lifetime and the last block until it fills and is flushed.
#pragma once

#include <string>
#include <vector>

namespace kvarn::autotune {

struct PoolPages {
  bool sink = false; ///< block 0 of every request
  bool tail = false; ///< the last block of every request

  bool any() const { return sink || tail; }
  /// The pool blocks of a request of `pages` blocks, each once (a one-block request's block is
  /// both its sink and its tail).
  std::vector<int> blocks(int pages) const {
    std::vector<int> list;
    if (pages >= 1 && (sink || (tail && pages == 1)))
      list.push_back(0);
    if (pages >= 2 && tail)
      list.push_back(pages - 1);
    return list;
  }
  /// Tokens of a request of `context` tokens that are read from its pool blocks.
  int tokens(int context, int tileTokens) const {
    int total = 0;
    for (int k : blocks((context + tileTokens - 1) / tileTokens))
      total += context - k * tileTokens < tileTokens ? context - k * tileTokens : tileTokens;
    return total;
  }
  /// Bytes one (request, kv head) of `context` tokens reads in a decode: its record tokens at
  /// `recordBytesPerToken` (RecordLayout::readBytesPerToken: the fields, not the stride's
  /// padding) and its pool tokens' fp16 K and V rows. The bench's and the tuner's roofline.
  double decodeReadBytes(int context, int tileTokens, double recordBytesPerToken,
                         int headDim) const {
    const int pool = tokens(context, tileTokens);
    return double(context - pool) * recordBytesPerToken + double(pool) * headDim * 4;
  }
  /// "sink", "tail", "sink,tail" or "" (the reports' and the tuning results' field).
  std::string key() const {
    return sink && tail ? "sink,tail" : sink ? "sink" : tail ? "tail" : "";
  }
  /// For messages and captions: "block 0 (the sink) and the last block (the tail)", ...
  std::string describe() const {
    return sink && tail ? "block 0 (the sink) and the last block (the tail)"
           : sink       ? "block 0 (the sink)"
           : tail       ? "the last block (the tail)"
                        : "no block";
  }
};

} // namespace kvarn::autotune
