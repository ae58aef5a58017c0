// Which blocks of every request a decode benchmark or tuning cache keeps as fp16 pool pages, the
// others being records: an engine keeps block 0 (the format's sink) in the pool for the request's
// lifetime and the last block until it fills and is flushed.
#pragma once

#include <algorithm>
#include <string>

namespace kvarn::autotune {

struct PoolPages {
  bool sink = false; ///< block 0 of every request
  bool tail = false; ///< the last block of every request

  bool any() const { return sink || tail; }
  /// Whether block `k` of a request of `pages` blocks is a pool page.
  bool holds(int k, int pages) const {
    return (sink && k == 0) || (tail && k == pages - 1);
  }
  /// Tokens of a request of `context` tokens that are read from pool pages (a one-block request's
  /// block counts once).
  int tokens(int context, int tileTokens) const {
    const int pages = (context + tileTokens - 1) / tileTokens;
    if (pages <= 0 || !any())
      return 0;
    if (pages == 1)
      return context;
    return (sink ? tileTokens : 0) + (tail ? context - (pages - 1) * tileTokens : 0);
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
