// The fast step's softmax and cost, one pass per row of logits: built by study/train/softmax_rows.py
// (torch.utils.cpp_extension, -O3 -march=native) and called through ctypes; plain C++, no torch headers.
//
// For each of `words` rows of [vocab] logits (the products H·Wᵀ, the bias not yet added): add the
// bias, take the largest logit m, e = exp(logit - m) and its sum s, the row's cross-entropy
// m + log(s) - logit[target], and G = e / s - one-hot(target), which overwrites the row (float32) or
// is written as bfloat16 over the bfloat16 products; the bias gradient's column sums of G accumulate
// in float64. The row stays in the first levels of cache between the passes, where PyTorch's ops
// (add, amax, softmax, amax, the one-hot and the column sum) each stream all 16 MB through memory.
// Every loop is a `#pragma omp simd` loop (-fopenmp-simd vectorises the sums without reordering
// anything else); exp is Cephes' expf, written so that the compiler vectorises it.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// exp(x) for x <= 0 (a logit minus its row's largest), to about 1 ulp; 0 below ln(FLT_MIN) = -87.34,
// where PyTorch's exp gives a subnormal under 1.2e-38 (beside the largest's 1 in the sum: nothing).
// A NaN stays NaN (the comparisons are false), so a diverged row's cost comes out NaN, as PyTorch's.
inline float exp_nonpositive(float value) {
    float x = value < -87.0f ? -87.0f : value;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest, by 1.5 * 2^23
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;  // ln 2 in two parts: r = x - n ln 2 to float32 precision
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return value < -87.3365f ? 0.0f : p * scale;
}

inline float from_bf16(uint16_t half) {
    uint32_t bits = static_cast<uint32_t>(half) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

// Round to nearest even, as PyTorch's float -> bfloat16 conversion; a NaN stays a (quiet) NaN.
inline uint16_t to_bf16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return value != value ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded);
}

inline bool targets_in_range(const int64_t *targets, int64_t words, int64_t vocab) {
    for (int64_t r = 0; r < words; r++)
        if (targets[r] < 0 || targets[r] >= vocab) return false;
    return true;
}

// x [vocab] float32 logits, the bias added -> e = exp(x - max) in x; returns the row's log-normaliser
// and, through *sum, the sum of e.
inline double normalise(float *x, int64_t vocab, float *sum) {
    float largest = -INFINITY;
#pragma omp simd reduction(max : largest)
    for (int64_t j = 0; j < vocab; j++) largest = x[j] > largest ? x[j] : largest;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < vocab; j++) {
        float e = exp_nonpositive(x[j] - largest);
        x[j] = e;
        total += e;
    }
    *sum = total;
    return static_cast<double>(largest) + std::log(static_cast<double>(total));
}

inline float load(float value) { return value; }
inline float load(uint16_t value) { return from_bf16(value); }
inline void store(float &out, float value) { out = value; }
inline void store(uint16_t &out, float value) { out = to_bf16(value); }

// logits [words, vocab] of T (float: the logits themselves are the float32 row, written in place;
// bfloat16: `row` is scratch) -> G written over them; returns 0, or 1 (nothing written) when a target
// lies outside [0, vocab). *summed: the summed cross-entropy; bias_sum [vocab] += G's column sums.
template <typename T>
int softmax_cost(T *logits, const float *bias, const int64_t *targets, int64_t words, int64_t vocab,
                 double *bias_sum, double *summed, float *row) {
    if (!targets_in_range(targets, words, vocab)) return 1;
    double cost = 0.0;
    for (int64_t r = 0; r < words; r++) {
        T *out = logits + r * vocab;
        float *x = row != nullptr ? row : reinterpret_cast<float *>(out);  // T is float where row is null
#pragma omp simd
        for (int64_t j = 0; j < vocab; j++) x[j] = load(out[j]) + bias[j];
        const int64_t target = targets[r];
        float target_logit = x[target], total;
        cost += normalise(x, vocab, &total) - static_cast<double>(target_logit);
        float inverse = 1.0f / total, target_gradient = x[target] * inverse - 1.0f;
#pragma omp simd
        for (int64_t j = 0; j < vocab; j++) {
            float g = x[j] * inverse;
            store(out[j], g);
            bias_sum[j] += g;
        }
        store(out[target], target_gradient);
        bias_sum[target] -= 1.0;
    }
    *summed = cost;
    return 0;
}

}  // namespace

extern "C" {

// logits [words, vocab] float32 (H·Wᵀ) -> G in place.
int softmax_cost_f32(float *logits, const float *bias, const int64_t *targets, int64_t words, int64_t vocab,
                     double *bias_sum, double *summed) {
    return softmax_cost(logits, bias, targets, words, vocab, bias_sum, summed, nullptr);
}

// products [words, vocab] bfloat16 (H·Wᵀ) -> G in bfloat16, through `row` [vocab] float32 scratch:
// the cost and the bias sums come from the float32 G.
int softmax_cost_bf16(uint16_t *products, const float *bias, const int64_t *targets, int64_t words, int64_t vocab,
                      double *bias_sum, double *summed, float *row) {
    return softmax_cost(products, bias, targets, words, vocab, bias_sum, summed, row);
}

}  // extern "C"
