// Benchmark reports: JSON and a self-contained HTML/SVG chart against the roofline.
#include "kvarn/Autotune/Bench.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

namespace kvarn::autotune {

std::string benchReportJson(const BenchReport &report) {
  nlohmann::json rows = nlohmann::json::array();
  for (const BenchRow &r : report.rows)
    rows.push_back({{"batch", r.batch},
                    {"context", r.context},
                    {"splits", r.splits},
                    {"kvarn_ms", r.kvarnMs},
                    {"kvarn_gb_s", r.kvarnGBs},
                    {"kvarn_fraction_of_bandwidth", r.kvarnGBs / report.bandwidthGBs},
                    {"fp16_ms", r.fp16Ms},
                    {"fp16_gb_s", r.fp16GBs},
                    {"fp16_fraction_of_bandwidth", r.fp16GBs / report.bandwidthGBs},
                    {"speedup", r.fp16Ms / r.kvarnMs},
                    {"schedule", r.schedule.empty() ? report.schedule : r.schedule}});
  return nlohmann::json{{"gpu", report.gpu},
                        {"spec", report.spec},
                        {"schedule", report.schedule},
                        {"baseline_schedule", report.baselineSchedule},
                        {"measured_bandwidth_gb_s", report.bandwidthGBs},
                        {"sink_in_pool", report.poolPages.sink},
                        {"tail_in_pool", report.poolPages.tail},
                        {"rows", rows}}
             .dump(2) +
         "\n";
}

namespace {

std::string escape(const std::string &text) {
  std::string out;
  for (char c : text)
    out += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return out;
}

std::string number(double value, const char *format = "%.1f") {
  char text[32];
  std::snprintf(text, sizeof(text), format, value);
  return text;
}

} // namespace

std::string benchReportHtml(const BenchReport &report) {
  // Step 1. Axes: log2(context) horizontally, fraction of the roofline (0 .. 100%) vertically.
  const double width = 760, height = 420, left = 70, right = 170, top = 30, bottom = 50;
  std::set<int> contexts;
  std::map<int, std::vector<const BenchRow *>> byBatch;
  for (const BenchRow &r : report.rows) {
    contexts.insert(r.context);
    byBatch[r.batch].push_back(&r);
  }
  const double lo = contexts.empty() ? 0 : std::log2(double(*contexts.begin()));
  const double hi = contexts.empty() ? 1 : std::max(lo + 1, std::log2(double(*contexts.rbegin())));
  auto x = [&](int context) {
    return left + (std::log2(double(context)) - lo) / (hi - lo) * (width - left - right);
  };
  auto y = [&](double fraction) {
    return top + (1.0 - std::clamp(fraction, 0.0, 1.05) / 1.05) * (height - top - bottom);
  };
  static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                 "#8c564b", "#17becf", "#7f7f7f"};
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + number(width, "%.0f") +
                    "\" height=\"" + number(height, "%.0f") + "\" font-family=\"sans-serif\" "
                    "font-size=\"12\">\n";
  // Grid and labels.
  for (int percent = 0; percent <= 100; percent += 20) {
    const double gy = y(percent / 100.0);
    svg += "<line x1=\"" + number(left) + "\" y1=\"" + number(gy) + "\" x2=\"" +
           number(width - right) + "\" y2=\"" + number(gy) + "\" stroke=\"#ddd\"/>\n";
    svg += "<text x=\"" + number(left - 8) + "\" y=\"" + number(gy + 4) +
           "\" text-anchor=\"end\">" + std::to_string(percent) + "%</text>\n";
  }
  for (int context : contexts) {
    svg += "<text x=\"" + number(x(context)) + "\" y=\"" + number(height - bottom + 18) +
           "\" text-anchor=\"middle\">" +
           (context >= 1024 ? std::to_string(context / 1024) + "K" : std::to_string(context)) +
           "</text>\n";
  }
  svg += "<line class=\"roofline\" x1=\"" + number(left) + "\" y1=\"" + number(y(1.0)) +
         "\" x2=\"" + number(width - right) + "\" y2=\"" + number(y(1.0)) +
         "\" stroke=\"black\" stroke-width=\"2\"/>\n";
  svg += "<text x=\"" + number(width - right + 6) + "\" y=\"" + number(y(1.0) + 4) +
         "\">roofline " + number(report.bandwidthGBs, "%.0f") + " GB/s</text>\n";
  svg += "<line x1=\"" + number(left) + "\" y1=\"" + number(y(0.8)) + "\" x2=\"" +
         number(width - right) + "\" y2=\"" + number(y(0.8)) +
         "\" stroke=\"black\" stroke-dasharray=\"2,4\"/>\n";
  svg += "<text x=\"" + number(width - right + 6) + "\" y=\"" + number(y(0.8) + 4) +
         "\">80% target</text>\n";
  svg += "<text x=\"" + number((width - right + left) / 2) + "\" y=\"" + number(height - 10) +
         "\" text-anchor=\"middle\">context length (tokens)</text>\n";
  svg += "<text transform=\"rotate(-90)\" x=\"" + number(-(height - bottom + top) / 2) +
         "\" y=\"16\" text-anchor=\"middle\">achieved bandwidth / measured read bandwidth</text>\n";
  // Step 2. One solid (KVarN) and one dashed (fp16) line per batch.
  size_t index = 0;
  for (auto &[batch, rows] : byBatch) {
    std::sort(rows.begin(), rows.end(),
              [](const BenchRow *a, const BenchRow *b) { return a->context < b->context; });
    const std::string color = colors[index % 8];
    std::string kvarn, fp16;
    for (const BenchRow *r : rows) {
      kvarn += number(x(r->context)) + "," + number(y(r->kvarnGBs / report.bandwidthGBs)) + " ";
      fp16 += number(x(r->context)) + "," + number(y(r->fp16GBs / report.bandwidthGBs)) + " ";
    }
    svg += "<polyline class=\"kvarn\" fill=\"none\" stroke=\"" + color +
           "\" stroke-width=\"2\" points=\"" + kvarn + "\"/>\n";
    svg += "<polyline class=\"fp16\" fill=\"none\" stroke=\"" + color +
           "\" stroke-dasharray=\"6,4\" points=\"" + fp16 + "\"/>\n";
    const double ly = top + 20 + 18.0 * double(index);
    svg += "<line x1=\"" + number(width - right + 6) + "\" y1=\"" + number(ly + 40) + "\" x2=\"" +
           number(width - right + 30) + "\" y2=\"" + number(ly + 40) + "\" stroke=\"" + color +
           "\" stroke-width=\"2\"/><text x=\"" + number(width - right + 36) + "\" y=\"" +
           number(ly + 44) + "\">batch " + std::to_string(batch) + "</text>\n";
    ++index;
  }
  svg += "</svg>\n";
  // Step 3. The page: title, chart, the table.
  std::string html = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>kvarn decode "
                     "benchmark</title><style>body{font-family:sans-serif;margin:24px}"
                     "table{border-collapse:collapse}td,th{padding:3px 10px;text-align:right;"
                     "border-bottom:1px solid #ddd}</style></head><body>\n";
  html += "<h2>KVarN decode vs fp16 paged decode: " + escape(report.gpu) + "</h2>\n";
  html += "<p>" + escape(report.spec) + ", schedule <code>" + escape(report.schedule) +
          "</code>; solid: KVarN (compressed bytes), dashed: fp16 (schedule <code>" +
          escape(report.baselineSchedule) + "</code>); measured read bandwidth " +
          number(report.bandwidthGBs, "%.0f") + " GB/s" +
          (report.poolPages.any()
               ? "; KVarN pool pages (fp16): " + report.poolPages.describe() + " of every request"
               : std::string()) +
          ".</p>\n";
  html += svg;
  html += "<table><tr><th>batch</th><th>context</th><th>KVarN ms</th><th>GB/s</th><th>of BW</th>"
          "<th>fp16 ms</th><th>GB/s</th><th>of BW</th><th>speedup</th><th>splits</th></tr>\n";
  for (const BenchRow &r : report.rows)
    html += "<tr><td>" + std::to_string(r.batch) + "</td><td>" + std::to_string(r.context) +
            "</td><td>" + number(r.kvarnMs, "%.4f") + "</td><td>" + number(r.kvarnGBs, "%.0f") +
            "</td><td>" + number(100 * r.kvarnGBs / report.bandwidthGBs, "%.0f") + "%</td><td>" +
            number(r.fp16Ms, "%.4f") + "</td><td>" + number(r.fp16GBs, "%.0f") + "</td><td>" +
            number(100 * r.fp16GBs / report.bandwidthGBs, "%.0f") + "%</td><td>" +
            number(r.fp16Ms / r.kvarnMs, "%.2f") + "x</td><td>" + std::to_string(r.splits) +
            (r.schedule.empty() ? std::string() : " (<code>" + escape(r.schedule) + "</code>)") +
            "</td></tr>\n";
  html += "</table></body></html>\n";
  return html;
}

} // namespace kvarn::autotune
