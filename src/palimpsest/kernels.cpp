// The compiled CPU loops of palimpsest/kernels.py (read and built there on first use).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

// Reads are random rows of a table far larger than the caches: asking for the row a few reads
// ahead lets its cache lines arrive while the current one is used (measured at 262k slots of
// width 256 on 2 cores: the weights' gradient 15.1 -> 7.7 ms with 8 reads ahead; 4 or 16: slower).
constexpr int64_t kAhead = 8;

static inline void prefetch_row(const float* row, int64_t width) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t line = 0; line < width * static_cast<int64_t>(sizeof(float)); line += 64) {
    __builtin_prefetch(bytes + line);
  }
}

// out[slot] += weight * grad_output[token] for every read; out is zeroed by the caller.
void value_gradient(torch::Tensor indices, torch::Tensor weights, torch::Tensor grad_output,
                    torch::Tensor out) {
  const int64_t reads = indices.size(1), width = grad_output.size(1), rows = out.size(0);
  const int64_t total = indices.numel();
  const int64_t* index = indices.data_ptr<int64_t>();
  const float* weight = weights.data_ptr<float>();
  const float* grad = grad_output.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const int64_t parts = std::max<int64_t>(1, at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t low = rows * part / parts, high = rows * (part + 1) / parts;
      for (int64_t n = 0; n < total; ++n) {
        const int64_t slot = index[n];
        if (slot < low || slot >= high) continue;
        const float w = weight[n];
        const float* g = grad + (n / reads) * width;
        float* row = result + slot * width;
#pragma omp simd
        for (int64_t d = 0; d < width; ++d) row[d] += w * g[d];
      }
    }
  });
}

// out[token, read] = dot(values[indices[token, read]], grad_output[token]).
void weight_gradient(torch::Tensor indices, torch::Tensor values, torch::Tensor grad_output,
                     torch::Tensor out) {
  const int64_t tokens = indices.size(0), reads = indices.size(1), width = grad_output.size(1);
  const int64_t total = indices.numel();
  const int64_t* index = indices.data_ptr<int64_t>();
  const float* table = values.data_ptr<float>();
  const float* grad = grad_output.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = grad + t * width;
      for (int64_t r = 0; r < reads; ++r) {
        const int64_t n = t * reads + r;
        if (n + kAhead < total) prefetch_row(table + index[n + kAhead] * width, width);
        const float* row = table + index[n] * width;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < width; ++d) sum += row[d] * g[d];
        result[t * reads + r] = sum;
      }
    }
  });
}

// The sparse value gradient: the reads sorted by slot (``order``: flat read positions), each
// distinct slot's reads a segment starting at ``starts``; out[row] = sum over its segment of
// weight * grad_output[token]. One thread per range of rows, no atomics, nothing gathered.
void segment_value_gradient(torch::Tensor order, torch::Tensor starts, int64_t reads,
                            torch::Tensor weights, torch::Tensor grad_output, torch::Tensor out) {
  const int64_t distinct = out.size(0), width = out.size(1), total = order.numel();
  const int64_t* position = order.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  const float* weight = weights.data_ptr<float>();
  const float* grad = grad_output.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, distinct, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = result + r * width;
      for (int64_t d = 0; d < width; ++d) row[d] = 0.f;
      const int64_t last = r + 1 < distinct ? start[r + 1] : total;
      for (int64_t e = start[r]; e < last; ++e) {
        const int64_t n = position[e];
        const float w = weight[n];
        const float* g = grad + (n / reads) * width;
#pragma omp simd
        for (int64_t d = 0; d < width; ++d) row[d] += w * g[d];
      }
    }
  });
}

// Lazy AdamW on the distinct ``rows`` of a table, in place: the update of torch's AdamW, rows
// read only (palimpsest.optim.LazyAdamW's torch path does the same in chunks of gathered rows).
void lazy_adamw_rows(torch::Tensor parameter, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                     torch::Tensor rows, torch::Tensor grad, double lr, double beta1, double beta2,
                     double eps, double decay, double step_size, double root_correction) {
  const int64_t count = rows.numel(), width = parameter.size(1);
  const int64_t* row = rows.data_ptr<int64_t>();
  float* weights = parameter.data_ptr<float>();
  float* first = exp_avg.data_ptr<float>();
  float* second = exp_avg_sq.data_ptr<float>();
  const float* gradient = grad.data_ptr<float>();
  const float keep = 1.f - float(lr) * float(decay), mix = 1.f - float(beta1);
  const float b2 = float(beta2), fresh = 1.f - float(beta2), epsilon = float(eps);
  const float size = float(step_size), correction = float(root_correction);
  at::parallel_for(0, count, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i + kAhead < end) {
        const int64_t ahead = row[i + kAhead] * width;
        prefetch_row(weights + ahead, width);
        prefetch_row(first + ahead, width);
        prefetch_row(second + ahead, width);
      }
      const int64_t offset = row[i] * width;
      float* w = weights + offset;
      float* m = first + offset;
      float* v = second + offset;
      const float* g = gradient + i * width;
#pragma omp simd
      for (int64_t d = 0; d < width; ++d) {
        const float gd = g[d];
        w[d] *= keep;
        m[d] += mix * (gd - m[d]);
        v[d] = v[d] * b2 + fresh * (gd * gd);
        w[d] -= size * (m[d] / (std::sqrt(v[d]) / correction + epsilon));
      }
    }
  });
}

// A float and its position packed in one integer that orders as the float does, best (largest)
// first: partial sorts then compare single integers instead of float-index pairs.
static inline uint64_t packed(float value, uint32_t position) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // ascending as unsigned
  return (static_cast<uint64_t>(~bits) << 32) | position;       // descending
}

static inline std::pair<float, int64_t> unpacked(uint64_t key) {
  uint32_t bits = ~static_cast<uint32_t>(key >> 32);
  bits = (bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return {value, static_cast<int64_t>(static_cast<uint32_t>(key))};
}

// The k largest of x[0..n) (n >= k), best first, and their positions. The smallest of the maxima
// of k disjoint groups is at most the k-th largest value (k values reach it), so only values
// reaching it are candidates (about a fifth of a row of 512 for k = 32); the k best of those
// are then selected and sorted. ``where`` and ``keys`` have room for n.
static void top_k_of_row(const float* x, int64_t n, int64_t k, uint32_t* where, uint64_t* keys,
                         std::pair<float, int64_t>* out) {
  const int64_t group = n / k;
  float threshold = std::numeric_limits<float>::infinity();
  for (int64_t g = 0; g < k; ++g) {
    const float* part = x + g * group;
    float most = part[0];
#pragma omp simd reduction(max : most)
    for (int64_t i = 1; i < group; ++i) most = std::max(most, part[i]);
    threshold = std::min(threshold, most);
  }
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    where[count] = static_cast<uint32_t>(i);
    count += x[i] >= threshold;
  }
  if (count < k) {  // only with NaN scores, which compare false: every value is a candidate
    for (int64_t i = 0; i < n; ++i) where[i] = static_cast<uint32_t>(i);
    count = n;
  }
  for (int64_t c = 0; c < count; ++c) keys[c] = packed(x[where[c]], where[c]);
  std::nth_element(keys, keys + (k - 1), keys + count);
  std::sort(keys, keys + k);
  for (int64_t i = 0; i < k; ++i) out[i] = unpacked(keys[i]);
}

// Exact top-k of the n_keys^2 product keys for every (token, head): the k best half-key scores
// of each half, then the k best sums of one from each. Both lists being sorted, the best pairs
// come from a heap over the first list's entries, each paired with its next unused partner of
// the second list (k log k work, no k x k candidate table).
// scores: (heads, 2, tokens, n_keys); outputs: (tokens, heads, k).
void product_key_select(torch::Tensor scores, int64_t k, torch::Tensor out_scores,
                        torch::Tensor out_slots, torch::Tensor out_rows, torch::Tensor out_columns) {
  const int64_t heads = scores.size(0), tokens = scores.size(2), n = scores.size(3);
  const float* score = scores.data_ptr<float>();
  float* best = out_scores.data_ptr<float>();
  int64_t* slot = out_slots.data_ptr<int64_t>();
  int64_t* row = out_rows.data_ptr<int64_t>();
  int64_t* column = out_columns.data_ptr<int64_t>();
  at::parallel_for(0, tokens * heads, 16, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int64_t>> first(k), second(k), frontier(k);
    std::vector<uint32_t> where(n);
    std::vector<uint64_t> keys(n);
    std::vector<int64_t> partner(k);
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / heads, h = th % heads;
      top_k_of_row(score + ((h * 2) * tokens + t) * n, n, k, where.data(), keys.data(), first.data());
      top_k_of_row(score + ((h * 2 + 1) * tokens + t) * n, n, k, where.data(), keys.data(), second.data());
      for (int64_t i = 0; i < k; ++i) {
        partner[i] = 0;
        frontier[i] = {first[i].first + second[0].first, i};
      }
      std::make_heap(frontier.begin(), frontier.end());  // the best sum at the front
      int64_t size = k;
      for (int64_t j = 0; j < k; ++j) {
        std::pop_heap(frontier.begin(), frontier.begin() + size);
        const auto [sum, i] = frontier[size - 1];
        const int64_t out = th * k + j;
        best[out] = sum;
        row[out] = first[i].second;
        column[out] = second[partner[i]].second;
        slot[out] = row[out] * n + column[out];
        if (++partner[i] < k) {
          frontier[size - 1] = {first[i].first + second[partner[i]].first, i};
          std::push_heap(frontier.begin(), frontier.begin() + size);
        } else {
          --size;
        }
      }
    }
  });
}

// Backward of the selected scores s[t,h,j] = q[t,h,0] . key[h,0,row] + q[t,h,1] . key[h,1,column]:
// only the k selected scores per (token, head) carry a gradient, so only their keys are read.
// grad_queries (tokens, heads, 2, half) is written whole; grad_keys (heads, 2, n_keys, half) must be
// zero: each thread owns a range of its rows (no atomics).
void key_score_backward(torch::Tensor queries, torch::Tensor keys, torch::Tensor rows,
                        torch::Tensor columns, torch::Tensor grad, torch::Tensor grad_queries,
                        torch::Tensor grad_keys) {
  const int64_t tokens = rows.size(0), heads = rows.size(1), k = rows.size(2);
  const int64_t n = keys.size(2), half = keys.size(3);
  const float* query = queries.data_ptr<float>();
  const float* key = keys.data_ptr<float>();
  const int64_t* index[2] = {rows.data_ptr<int64_t>(), columns.data_ptr<int64_t>()};
  const float* g = grad.data_ptr<float>();
  float* gq = grad_queries.data_ptr<float>();
  float* gk = grad_keys.data_ptr<float>();
  at::parallel_for(0, tokens * heads, 16, [&](int64_t begin, int64_t end) {
    for (int64_t th = begin; th < end; ++th) {
      const int64_t h = th % heads;
      for (int64_t side = 0; side < 2; ++side) {
        float* out = gq + (th * 2 + side) * half;
        for (int64_t d = 0; d < half; ++d) out[d] = 0.f;
        for (int64_t j = 0; j < k; ++j) {
          const float w = g[th * k + j];
          const float* row = key + ((h * 2 + side) * n + index[side][th * k + j]) * half;
#pragma omp simd
          for (int64_t d = 0; d < half; ++d) out[d] += w * row[d];
        }
      }
    }
  });
  const int64_t key_rows = heads * 2 * n;
  const int64_t parts = std::max<int64_t>(1, at::get_num_threads());
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t low = key_rows * part / parts, high = key_rows * (part + 1) / parts;
      for (int64_t th = 0; th < tokens * heads; ++th) {
        const int64_t h = th % heads;
        for (int64_t side = 0; side < 2; ++side) {
          const int64_t base = (h * 2 + side) * n;
          if (base + n <= low || base >= high) continue;
          const float* q = query + (th * 2 + side) * half;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t target = base + index[side][th * k + j];
            if (target < low || target >= high) continue;
            const float w = g[th * k + j];
            float* out = gk + target * half;
#pragma omp simd
            for (int64_t d = 0; d < half; ++d) out[d] += w * q[d];
          }
        }
      }
    }
  });
}
