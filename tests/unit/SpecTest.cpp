// KernelSpec and Schedule text forms, validation messages, and the verified module builder.
#include "kvarn/spec.h"
#include "kvarn/Dialect/KernelBuilder.h"
#include "kvarn/params.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

using namespace kvarn;
using ::testing::HasSubstr;

namespace {

TEST(KernelSpec, TextFormRoundTrips) {
  for (const char *text : {"decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a",
                           "decode:kvarn_k2v2_g64:d64:q5:bf16:sm_80",
                           "flush:kvarn_k4v4_g128:d256:q1:f16:sm_89:it16:compact",
                           "append:kvarn_k4v2_g64:d512:q1:bf16:sm_120",
                           "dequantize:kvarn_k4v2_g128:d128:q1:f16:sm_100a"}) {
    Expected<KernelSpec> spec = parseKernelSpec(text);
    ASSERT_TRUE(spec) << spec.error().str();
    EXPECT_EQ(spec->str(), text);
    EXPECT_EQ(*parseKernelSpec(spec->str()), *spec);
  }
  KernelSpec spec = *parseKernelSpec("flush:k4v4_g128:d256:q1:f16:sm_89:it16:compact");
  EXPECT_EQ(spec.op, OpKind::Flush);
  EXPECT_EQ(spec.format.sinkhornIterations, 16);
  EXPECT_EQ(spec.format.alignment, RecordAlignment::Compact);
  EXPECT_EQ(recordLayout(spec.format).tileBytesAligned, 35072u); // no power-of-two padding
}

TEST(KernelSpec, DtypeFieldsRoundTripAndOthersAreRefused) {
  for (DType dtype : {DType::F16, DType::BF16}) {
    Expected<DType> parsed = parseDtypeField(dtypeField(dtype));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_STREQ(dtypeField(DType::BF16), "bf16");
  Expected<DType> wrong = parseDtypeField("fp16"); // the name dtypeName prints is not a field
  ASSERT_FALSE(wrong);
  EXPECT_THAT(wrong.error().message, HasSubstr("expected f16 or bf16"));
}

std::string specError(const std::string &text) {
  Expected<KernelSpec> spec = parseKernelSpec(text);
  EXPECT_FALSE(spec) << text;
  return spec ? "" : spec.error().message;
}

TEST(KernelSpec, ErrorsNameTheFieldTheValueAndWhatIsAllowed) {
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q8:f16"), HasSubstr("has 5 fields"));
  EXPECT_THAT(specError("decodex:kvarn_k4v2_g128:d128:q8:f16:sm_90a"),
              HasSubstr("field 1 (op) is 'decodex'; expected decode, flush, append, dequantize or extend"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:128:q8:f16:sm_90a"),
              HasSubstr("field 3 (head_dim) is '128'; expected d<head_dim>"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d96:q8:f16:sm_90a"),
              HasSubstr("unsupported head_dim: 96 (supported: 64, 128, 256, 512)"));
  EXPECT_THAT(specError("decode:kvarn_k5v2_g128:d128:q8:f16:sm_90a"),
              HasSubstr("key bits: 5 needs a bit-stream packer"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q17:f16:sm_90a"),
              HasSubstr("field 4 (query heads per kv head) is 'q17'; expected q1 .. q16"));
  EXPECT_THAT(specError("flush:kvarn_k4v2_g128:d128:q8:f16:sm_90a"),
              HasSubstr("flush kernels take q1"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q8:f32:sm_90a"),
              HasSubstr("field 5 (dtype) is 'f32'; expected f16 or bf16"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q8:f16:sm_91"),
              HasSubstr("field 6 (arch) is 'sm_91'; unsupported arch 'sm_91'"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q8:f16:sm_75"),
              HasSubstr("arch 'sm_75' is older than sm_80: kvarn kernels need cp.async"));
  EXPECT_THAT(specError("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a:it"),
              HasSubstr("field 7 (option) is 'it'; expected it<iterations> or compact"));
}

TEST(Schedule, ParsesOverTheOpDefaultsAndRejectsBadKnobs) {
  Schedule s = *parseSchedule("warps=2,stages=3,splits=7,mma=none,rows_per_cta=9");
  EXPECT_EQ(s.warps, 2);
  EXPECT_EQ(s.stages, 3);
  EXPECT_EQ(s.splits, 7);
  EXPECT_EQ(s.mma, "none");
  EXPECT_EQ(s.rowsPerCta, 9);
  EXPECT_EQ(*parseSchedule(s.str()), s);
  EXPECT_EQ(parseSchedule("", OpKind::Flush)->warps, defaultSchedule(OpKind::Flush).warps);
  EXPECT_THAT(parseSchedule("warps").error().message, HasSubstr("is not key=value"));
  EXPECT_THAT(parseSchedule("lanes=3").error().message, HasSubstr("unknown key 'lanes'"));
  EXPECT_THAT(parseSchedule("warps=x").error().message, HasSubstr("warps is 'x'; expected an integer"));
  EXPECT_THAT(parseSchedule("mma=wgmma").error().message, HasSubstr("expected one of m16n8k16, m16n8k16.single"));
}

TEST(Schedule, ValidationChecksTheTargetLimits) {
  KernelSpec decode = *parseKernelSpec("decode:kvarn_k4v2_g128:d256:q16:f16:sm_89");
  Schedule big = *parseSchedule("warps=4");
  EXPECT_THAT(validateSchedule(decode, big).error().message, HasSubstr("sm_89 allows 101376"));
  decode.arch = "sm_90a";
  EXPECT_TRUE(validateSchedule(decode, big));
  // The flush holds its tile in fp16: D = 256 needs 94 KB at the default 16 warps, which fits
  // sm_89's 99 KB (and every other supported architecture).
  KernelSpec flush = *parseKernelSpec("flush:kvarn_k4v2_g128:d256:q1:f16:sm_89");
  EXPECT_TRUE(validateSchedule(flush, defaultSchedule(OpKind::Flush)));
  EXPECT_LE(sharedMemoryBytes(flush, defaultSchedule(OpKind::Flush)), 101376u);
  flush.arch = "sm_80";
  EXPECT_TRUE(validateSchedule(flush, defaultSchedule(OpKind::Flush)));
  EXPECT_THAT(validateSchedule(decode, *parseSchedule("heads_per_cta=4")).error().message,
              HasSubstr("heads_per_cta = 4"));
}

TEST(Schedule, FlushSharedMemoryKeepsTheTunedCtasPerSm) {
  // The flush's shared memory (the fp16 tile, the partial sums, the scale vectors, the warps' std
  // ranges) must not cap its CTAs per SM below what the tuned schedules run: on an H100/H200 five
  // CTAs of 4 warps per SM at D = 128 (96 registers) and two of 8 warps at D = 256 (the driver
  // reserves 1 KB per CTA). A layout that grows past that loses a CTA per SM (and a fifth or half
  // of the CTAs that hide each other's latency).
  auto ctasPerSm = [](const char *spec, const char *schedule) {
    const KernelSpec s = *parseKernelSpec(spec);
    return sharedMemoryPerSm(s.arch) / (sharedMemoryBytes(s, *parseSchedule(schedule)) + 1024);
  };
  EXPECT_GE(ctasPerSm("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "warps=4,stages=2,min_ctas=4"),
            5u);
  EXPECT_GE(ctasPerSm("flush:kvarn_k4v2_g128:d128:q1:f16:sm_90a", "warps=4"), 4u);
  EXPECT_GE(ctasPerSm("flush:kvarn_k4v2_g128:d256:q1:f16:sm_90a", "warps=8,stages=2"), 2u);
  EXPECT_GE(ctasPerSm("flush:kvarn_k4v2_g128:d256:q1:f16:sm_90a", "warps=8"), 2u);
}

namespace {
/// Shared-memory wavefronts of one warp-wide access of `bytes` per lane at byte addresses
/// `addresses` (32 lanes): the warp is served in phases of 128 bytes (32 lanes of 4 bytes, 16 of
/// 8, 8 of 16), and a phase takes as many wavefronts as the most distinct 4-byte words any bank
/// holds.
int wavefronts(const std::vector<int> &addresses, int bytes) {
  const int lanesPerPhase = 128 / std::max(bytes, 4);
  int total = 0;
  for (int first = 0; first < 32; first += lanesPerPhase) {
    std::map<int, std::set<int>> banks;
    for (int lane = first; lane < first + lanesPerPhase; ++lane)
      for (int word = addresses[lane] / 4; word <= (addresses[lane] + bytes - 1) / 4; ++word)
        banks[word % 32].insert(word);
    int most = 0;
    for (const auto &bank : banks)
      most = std::max<int>(most, bank.second.size());
    total += most;
  }
  return total;
}
} // namespace

TEST(Schedule, FlushSweepBlocksStepByWholeSwizzlePeriods) {
  // In sweeps that deal their tiles to the warps in turn (FlushSharedLayout::warpRuns 0; the
  // walking sweeps have a test of their own below), blockSums (flush.cuh) addresses a thread's
  // block in a warp's u-th round as its first round's block plus u * sweepRoundRows rows wherever
  // FlushSharedLayout::sweepStepped holds. Modeled for
  // every view the flush sweeps (K [D][G], V [G][D]), warp count, warp, lane and round: the
  // stepped address must be the swizzled layout's (TileView::at). Where a round moves fewer rows
  // than a swizzle period, stepping would be wrong, so the model must find such a case too.
  using dev::FlushSharedLayout;
  int stepped = 0, wrongIfStepped = 0;
  for (int d : {64, 128, 256})
    for (int g : {64, 128})
      for (bool keys : {true, false})
        for (int warps : {4, 8, 16}) {
          const int rows = keys ? d : g, cols = keys ? g : d, threads = 32 * warps;
          auto at = [&](int row, int col) {
            return row * cols + (col ^ (FlushSharedLayout::chunkSwizzle(row) << 3));
          };
          const int blockRows = FlushSharedLayout::blockRows(threads, rows, cols);
          const int tileRows = 4 * blockRows, segments = cols / 64;
          const int tiles = segments * (rows / tileRows);
          const int roundRows = FlushSharedLayout::sweepRoundRows(threads, rows, cols);
          const bool isStepped = FlushSharedLayout::sweepStepped(threads, rows, cols);
          stepped += isStepped;
          if (roundRows == 0)
            continue;
          for (int warp = 0; warp < warps && warp < tiles; ++warp)
            for (int laneRow = 0; laneRow < 4; ++laneRow)
              for (int laneCol = 0; laneCol < 8; ++laneCol) {
                auto block = [&](int tile) {
                  return at((tile / segments) * tileRows + laneRow * blockRows,
                            (tile % segments) * 64 + 8 * laneCol);
                };
                for (int u = 1; warp + u * warps < tiles; ++u) {
                  const int steppedAddress = block(warp) + u * roundRows * cols;
                  if (isStepped)
                    EXPECT_EQ(block(warp + u * warps), steppedAddress)
                        << (keys ? "K" : "V") << " D " << d << " G " << g << " warps " << warps
                        << " warp " << warp << " lane " << laneRow << "," << laneCol << " u " << u;
                  else
                    wrongIfStepped += block(warp + u * warps) != steppedAddress;
                }
              }
        }
  EXPECT_GT(stepped, 0) << "no sweep steps: the kernel's fast addressing is never used";
  EXPECT_GT(wrongIfStepped, 0) << "no view shows why rounds must move whole swizzle periods";
}

TEST(Schedule, FlushWalkingSweepsSumWholeSubtreesOfTheColumnTrees) {
  // Where FlushSharedLayout::warpRuns holds, blockSums (flush.cuh) has each warp walk consecutive
  // tile rows of one column segment, add its stages' column sums in registers and two rounds'
  // through their partial, and the column steps add COLUMN_PARTIALS partials per column as a
  // pairwise tree. That equals the CPU reference's tree over the column only if every tile is
  // summed once and every partial is an aligned run of columnRunTiles tile rows that one warp fills
  // in order. Modeled for every view, warp count and stages, with the walking blocks' stepped
  // addresses checked against the swizzled layout.
  using dev::FlushSharedLayout;
  int walking = 0, steppedWalks = 0, folded = 0;
  for (int d : {64, 128, 256})
    for (int g : {64, 128})
      for (bool keys : {true, false})
        for (int warps : {4, 8, 16})
          for (int stages : {1, 2, 4}) {
            const int rows = keys ? d : g, cols = keys ? g : d, threads = 32 * warps;
            const std::string where = std::string(keys ? "K" : "V") + " D " + std::to_string(d) +
                                      " G " + std::to_string(g) + " warps " +
                                      std::to_string(warps) + " stages " + std::to_string(stages);
            const int blockRows = FlushSharedLayout::blockRows(threads, rows, cols);
            const int tileRows = 4 * blockRows, segments = cols / 64, rowTiles = rows / tileRows;
            const int runs = FlushSharedLayout::warpRuns(threads, rows, cols);
            const int runTiles = FlushSharedLayout::columnRunTiles(threads, rows, cols, stages);
            const int partials = FlushSharedLayout::columnPartials(threads, rows, cols, stages);
            const int sweepStages = FlushSharedLayout::sweepStages(threads, rows, cols, stages);
            EXPECT_EQ(partials * runTiles, rowTiles) << where;
            EXPECT_EQ(rowTiles % runTiles, 0) << where;
            EXPECT_EQ(runTiles & (runTiles - 1), 0) << where << ": a run is a subtree";
            EXPECT_LE(runTiles, 2 * sweepStages)
                << where << ": blockSums adds at most two rounds' sums into a run (one tree node)";
            if (runs == 0) {
              EXPECT_EQ(runTiles, 1) << where;
              continue;
            }
            ++walking;
            const bool stepped = FlushSharedLayout::walkStepped(threads, rows, cols, stages);
            steppedWalks += stepped;
            auto at = [&](int row, int col) {
              return row * cols + (col ^ (FlushSharedLayout::chunkSwizzle(row) << 3));
            };
            std::map<std::pair<int, int>, int> tileOwner;          // (tile row, segment) -> warp
            std::map<std::pair<int, int>, std::vector<int>> fills; // (partial, segment) -> tiles
            for (int warp = 0; warp < warps; ++warp)
              for (int round = 0; round < runs; round += sweepStages) {
                for (int s = 0; s < sweepStages; ++s) {
                  const int row =
                      FlushSharedLayout::sweepTileRow(threads, rows, cols, warp, round + s);
                  const int segment = FlushSharedLayout::sweepTileColumn(threads, cols, warp, 0);
                  EXPECT_EQ(row,
                            FlushSharedLayout::sweepTileRow(threads, rows, cols, warp, round) + s);
                  EXPECT_TRUE(tileOwner.emplace(std::make_pair(row, segment), warp).second)
                      << where << ": tile row " << row << " summed twice";
                  fills[{row / runTiles, segment}].push_back(row);
                  if (stepped)
                    for (int laneRow = 0; laneRow < 4; ++laneRow)
                      for (int laneCol = 0; laneCol < 8; ++laneCol) {
                        const int first =
                            at((FlushSharedLayout::sweepTileRow(threads, rows, cols, warp, s)) *
                                       tileRows +
                                   laneRow * blockRows,
                               segment * 64 + 8 * laneCol);
                        EXPECT_EQ(
                            first + round * tileRows * cols,
                            at(row * tileRows + laneRow * blockRows, segment * 64 + 8 * laneCol))
                            << where << " warp " << warp << " round " << round << " stage " << s;
                      }
                }
                // A round that does not start a run adds to the one stored the round before.
                const int row = FlushSharedLayout::sweepTileRow(threads, rows, cols, warp, round);
                if (row % runTiles != 0) {
                  ++folded;
                  EXPECT_EQ((row - sweepStages) / runTiles, row / runTiles) << where;
                  EXPECT_GE(round, sweepStages) << where;
                }
              }
            EXPECT_EQ(static_cast<int>(tileOwner.size()), rowTiles * segments) << where;
            EXPECT_EQ(static_cast<int>(fills.size()), partials * segments) << where;
            for (const auto &fill : fills) {
              const int partial = fill.first.first;
              std::vector<int> expected(runTiles);
              for (int t = 0; t < runTiles; ++t)
                expected[t] = partial * runTiles + t;
              EXPECT_EQ(fill.second, expected) << where << ": partial " << partial;
              std::set<int> owners;
              for (int row : fill.second)
                owners.insert(tileOwner[{row, fill.first.second}]);
              EXPECT_EQ(owners.size(), 1u)
                  << where << ": partial " << partial << " has two writers";
            }
          }
  EXPECT_GT(walking, 0) << "no view walks: every sweep deals its tiles in turn";
  EXPECT_GT(steppedWalks, 0) << "no walking sweep steps its blocks";
  EXPECT_GT(folded, 0) << "no run spans two rounds";
}

TEST(Schedule, FlushTileLayoutServesEverySweepAtTheFewestWavefronts) {
  // The flush's fp16 tile M (flush.cuh, TileView::at): rows of 128 elements, chunks of 8 permuted
  // by FlushSharedLayout::chunkSwizzle. Each access pattern of the kernel, modeled lane by lane
  // (a 4 x 4-row-block tile of 16 rows x 64 columns per warp; rowPerm and pairPerm are the lane
  // permutations of laneTreeFirst), must take the fewest wavefronts its bytes allow.
  using dev::FlushSharedLayout;
  constexpr int S = 128;
  // The byte offset of element (row, col) in rows of rowLength elements; `at` for rows of S.
  auto atIn = [](int rowLength, int row, int col) {
    return 2 * (row * rowLength + (col ^ (FlushSharedLayout::chunkSwizzle(row) << 3)));
  };
  auto at = [&](int row, int col) { return atIn(S, row, col); };
  auto rowPerm = [](int q) { return ((q & 1) << 1) | ((q >> 1) & 1); };
  for (int tileRow = 0; tileRow < 8; ++tileRow)
    for (int tileCol = 0; tileCol < 2; ++tileCol)
      for (int slot = 0; slot < 4; ++slot) {
        // Row sweeps: lane = 8 block row + block column, each lane a 16-byte chunk of row
        // (slot ^ rowPerm) of its block.
        std::vector<int> rows(32), columns(32);
        for (int lane = 0; lane < 32; ++lane) {
          const int blockRow = lane / 8, blockCol = lane % 8;
          rows[lane] = at(16 * tileRow + 4 * blockRow + (slot ^ rowPerm(blockCol)),
                          64 * tileCol + 8 * blockCol);
        }
        EXPECT_EQ(wavefronts(rows, 16), 4) << "row sweep, tile row " << tileRow;
        // Column sweeps: lane = 4 block column + block row, each lane the 4-byte pair k ^ pairPerm
        // of its chunk.
        for (int k = 0; k < 4; ++k) {
          for (int lane = 0; lane < 32; ++lane) {
            const int blockRow = lane % 4, blockCol = lane / 4;
            const int pairPerm = ((blockRow & 1) << 1) | ((blockRow >> 1) & 1);
            columns[lane] = at(16 * tileRow + 4 * blockRow + slot, 64 * tileCol + 8 * blockCol) +
                            4 * (k ^ pairPerm);
          }
          EXPECT_EQ(wavefronts(columns, 4), 1) << "column sweep, tile row " << tileRow;
        }
      }
  // RTN: thread t of 128 takes row rtnRow(t) and reads four elements (8 bytes) at a time, the same
  // columns in every lane: as padded rows did, two wavefronts per half-warp.
  std::vector<bool> dealt(256, false);
  for (int slot = 0; slot < 256; ++slot) {
    const int row = FlushSharedLayout::rtnRow(slot);
    ASSERT_TRUE(row >= 0 && row < 256 && !dealt[row]) << "slot " << slot;
    dealt[row] = true;
  }
  for (int warp = 0; warp < 4; ++warp)
    for (int col = 0; col < S; col += 4) {
      std::vector<int> rtn(32);
      for (int lane = 0; lane < 32; ++lane)
        rtn[lane] = at(FlushSharedLayout::rtnRow(32 * warp + lane), col);
      EXPECT_EQ(wavefronts(rtn, 8), 4) << "RTN, column " << col;
    }
  // The K tile's loads and transposing stores (loadTile, FlushSharedLayout::keyLoadPair): every
  // (token pair, 8-channel block) item exactly once; a lane pair reads the two 16-byte halves of
  // one 32-byte sector (same token pair, channel blocks 2s and 2s + 1); and each of a warp's eight
  // stores (channel j of its block, a 4-byte pair of adjacent tokens, whole under the swizzle)
  // takes one wavefront. Warps take consecutive items (thread t of a round: item t + 32 w ...).
  for (int tokens : {64, 128}) {
    const int pairs = tokens / 2, items = pairs * (128 / 8);
    std::set<std::pair<int, int>> seen;
    for (int item = 0; item < items; ++item) {
      const int pair = FlushSharedLayout::keyLoadPair(item, pairs);
      const int channel = FlushSharedLayout::keyLoadChannel(item, pairs);
      ASSERT_TRUE(pair >= 0 && pair < pairs && channel >= 0 && channel < 128 && channel % 8 == 0);
      EXPECT_TRUE(seen.insert({pair, channel}).second) << "item " << item << " repeats";
      if (item % 2 == 1) {
        EXPECT_EQ(pair, FlushSharedLayout::keyLoadPair(item - 1, pairs)) << "sector of item " << item;
        EXPECT_EQ(channel, FlushSharedLayout::keyLoadChannel(item - 1, pairs) + 8);
        EXPECT_EQ(channel % 16, 8) << "the pair's channels are one 32-byte sector";
      }
    }
    EXPECT_EQ(int(seen.size()), items);
    for (int first = 0; first < items; first += 32)
      for (int j = 0; j < 8; ++j) {
        std::vector<int> stores(32);
        for (int lane = 0; lane < 32; ++lane) {
          const int token = 2 * FlushSharedLayout::keyLoadPair(first + lane, pairs);
          const int channel = FlushSharedLayout::keyLoadChannel(first + lane, pairs) + j;
          stores[lane] = atIn(tokens, channel, token);
          EXPECT_EQ(atIn(tokens, channel, token + 1), stores[lane] + 2) << "K pair " << lane;
        }
        EXPECT_EQ(wavefronts(stores, 4), 1) << "K load, " << tokens << " tokens, items " << first
                                            << ", channel " << j;
      }
  }
}

TEST(KernelBuilder, BuildsAVerifiedModuleOrReportsWhy) {
  mlir::DialectRegistry registry;
  dialect::registerKvarnDialects(registry);
  mlir::MLIRContext context(registry);
  KernelSpec spec = *parseKernelSpec("decode:kvarn_k4v2_g128:d128:q8:f16:sm_90a");
  Expected<mlir::OwningOpRef<mlir::ModuleOp>> module =
      dialect::buildKernelModule(context, spec, Schedule());
  ASSERT_TRUE(module) << module.error().str();
  auto function = (*module)->lookupSymbol<mlir::func::FuncOp>(dialect::kernelName(spec));
  ASSERT_TRUE(function);
  EXPECT_EQ(dialect::kernelName(spec), "kvarn_decode_k4v2_g128_d128_q8_f16");
  EXPECT_EQ(function.getNumArguments(), 8u);
  EXPECT_EQ((*module)->getOperation()->getAttrOfType<mlir::StringAttr>(dialect::kSpecAttrName).str(),
            spec.str());
  spec.arch = "sm_89";
  spec.format.headDim = 256;
  spec.queryHeadsPerKvHead = 16;
  Expected<mlir::OwningOpRef<mlir::ModuleOp>> rejected =
      dialect::buildKernelModule(context, spec, *parseSchedule("warps=8"));
  ASSERT_FALSE(rejected);
  EXPECT_THAT(rejected.error().message, HasSubstr("shared memory"));
}

} // namespace
