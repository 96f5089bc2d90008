// libtorch calls that tch 0.26 does not wrap. Every function catches C++ exceptions and
// reports them through `err` (a NUL-terminated message, truncated to `err_len`), returning a
// non-zero status, so no exception ever unwinds into Rust.

#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/Version.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {
int fail(const char *message, char *err, size_t err_len) {
  if (err_len > 0) {
    std::strncpy(err, message, err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}
} // namespace

namespace {
// A Rust closure computing a block's output from its input and `n_extras` further tensors it
// reads (e.g. a prompt's keys/values): `run` returns 0 and a new tensor in `*output` (owned by
// the caller), or non-zero with a message in `err`; `drop` frees it.
using ftlab_block_fn = int (*)(void *closure, const at::Tensor *input, const at::Tensor *const *extras,
                               size_t n_extras, at::Tensor **output, char *err, size_t err_len);
using ftlab_drop_fn = void (*)(void *closure);

struct Block : torch::CustomClassHolder {
  void *closure;
  ftlab_block_fn run;
  ftlab_drop_fn drop;
  Block(void *closure, ftlab_block_fn run, ftlab_drop_fn drop) : closure(closure), run(run), drop(drop) {}
  ~Block() override { drop(closure); }

  at::Tensor operator()(const at::Tensor &input, at::TensorList extras) const {
    char err[1024] = {0};
    at::Tensor *output = nullptr;
    std::vector<const at::Tensor *> pointers;
    for (const auto &extra : extras) {
      pointers.push_back(&extra);
    }
    if (run(closure, &input, pointers.data(), pointers.size(), &output, err, sizeof err) != 0 ||
        output == nullptr) {
      throw std::runtime_error(std::string("a checkpointed block failed: ") + err);
    }
    at::Tensor result = std::move(*output);
    delete output;
    return result;
  }
};

// Activation checkpointing (torch.utils.checkpoint's reentrant form): the forward keeps only
// the block's inputs; the backward runs the block again with autograd on — with the random
// generator and autocast state the forward saw, so dropout masks and dtypes repeat — and
// back-propagates through it, which accumulates the gradients of the parameters inside and
// returns those of the inputs (`input` and the `extras`) to the graph they came from.
struct Checkpoint : public torch::autograd::Function<Checkpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &input,
                            at::TensorList extras, c10::intrusive_ptr<Block> block) {
    auto device = input.device();
    auto generator = at::globalContext().defaultGenerator(device);
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      ctx->saved_data["rng"] = generator.get_state();
    }
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(device.type());
    ctx->saved_data["autocast_dtype"] = at::autocast::get_autocast_dtype(device.type());
    ctx->saved_data["block"] = c10::IValue::make_capsule(block);
    std::vector<at::Tensor> saved{input};
    saved.insert(saved.end(), extras.begin(), extras.end());
    ctx->save_for_backward(saved);
    return (*block)(input, extras);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    // Leaves of the recomputed graph, so its backward stops at them.
    std::vector<at::Tensor> inputs;
    for (const auto &saved : ctx->get_saved_variables()) {
      inputs.push_back(saved.detach().requires_grad_(saved.requires_grad()));
    }
    auto input = inputs[0].requires_grad_(true);
    std::vector<at::Tensor> extras(inputs.begin() + 1, inputs.end());
    auto block = c10::static_intrusive_pointer_cast<Block>(ctx->saved_data["block"].toCapsule());
    auto device = input.device();
    auto generator = at::globalContext().defaultGenerator(device);
    at::Tensor rng_now;
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      rng_now = generator.get_state();
      generator.set_state(ctx->saved_data["rng"].toTensor());
    }
    bool autocast_now = at::autocast::is_autocast_enabled(device.type());
    auto autocast_dtype_now = at::autocast::get_autocast_dtype(device.type());
    at::autocast::set_autocast_enabled(device.type(), ctx->saved_data["autocast"].toBool());
    at::autocast::set_autocast_dtype(device.type(), ctx->saved_data["autocast_dtype"].toScalarType());
    auto restore = [&] {
      at::autocast::set_autocast_enabled(device.type(), autocast_now);
      at::autocast::set_autocast_dtype(device.type(), autocast_dtype_now);
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(rng_now);
    };
    at::Tensor output;
    try {
      at::AutoGradMode grad(true);
      output = (*block)(input, extras);
    } catch (...) {
      restore();
      throw;
    }
    restore();
    torch::autograd::backward({output}, {grads[0]});
    torch::autograd::variable_list result;
    for (const auto &leaf : inputs) {
      result.push_back(leaf.grad());
    }
    result.push_back(at::Tensor()); // the block
    return result;
  }
};
} // namespace

#define FTLAB_PROTECT(...)                                                     \
  try {                                                                        \
    __VA_ARGS__;                                                               \
    return 0;                                                                  \
  } catch (const std::exception &e) {                                          \
    return fail(e.what(), err, err_len);                                       \
  } catch (...) {                                                              \
    return fail("unknown C++ exception", err, err_len);                        \
  }

extern "C" {

// Whether autocast is on for `device_type` (c10::DeviceType) and in which dtype (c10::ScalarType).
int ftlab_autocast_state(int device_type, bool *enabled, int *dtype, char *err, size_t err_len) {
  FTLAB_PROTECT({
    auto device = static_cast<c10::DeviceType>(device_type);
    *enabled = at::autocast::is_autocast_enabled(device);
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
  })
}

// Turns autocast on or off for `device_type`, computing in `dtype`. Entering a region
// increments the nesting count; leaving the outermost one clears the cache of cast weights,
// as `torch.autocast` does.
int ftlab_autocast_set(int device_type, bool enabled, int dtype, bool entering, char *err, size_t err_len) {
  FTLAB_PROTECT({
    auto device = static_cast<c10::DeviceType>(device_type);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(device, enabled);
    if (entering) {
      at::autocast::increment_nesting();
    } else if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
  })
}

// The CUDA caching allocator's current and peak allocated bytes on `device`
// (torch.cuda.memory_allocated / max_memory_allocated).
int ftlab_cuda_allocated(int device, int64_t *current, int64_t *peak, char *err, size_t err_len) {
  FTLAB_PROTECT({
    auto *allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto &all = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    *current = all.current;
    *peak = all.peak;
  })
}

// One AdamW update of `n` parameters with PyTorch's fused kernel
// (`torch.optim.AdamW(fused=True)`): one pass over each tensor instead of a dozen elementwise
// ops. `step` is the (already incremented) step count as a float scalar tensor on the
// parameters' device, shared by all of them.
int ftlab_fused_adamw(const at::Tensor *const *params, const at::Tensor *const *grads,
                      const at::Tensor *const *exp_avgs, const at::Tensor *const *exp_avg_sqs, size_t n,
                      const at::Tensor *step, double lr, double beta1, double beta2, double weight_decay,
                      double eps, char *err, size_t err_len) {
  FTLAB_PROTECT({
    std::vector<at::Tensor> p, g, m, v, steps;
    for (size_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(*step);
    }
    at::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  })
}

// `block(input, extras)` with activation checkpointing (see `Checkpoint`): `*output` gets a new
// tensor owned by the caller. `block` is freed through `drop` when the graph lets go of it (also if
// this call fails).
int ftlab_checkpoint(const at::Tensor *input, const at::Tensor *const *extras, size_t n_extras, void *closure,
                     ftlab_block_fn run, ftlab_drop_fn drop, at::Tensor **output, char *err, size_t err_len) {
  auto block = c10::make_intrusive<Block>(closure, run, drop);
  FTLAB_PROTECT({
    std::vector<at::Tensor> rest;
    for (size_t i = 0; i < n_extras; ++i) {
      rest.push_back(*extras[i]);
    }
    *output = new at::Tensor(Checkpoint::apply(*input, at::TensorList(rest), std::move(block)));
  })
}

// Starts a new peak for `device` (torch.cuda.reset_peak_memory_stats).
int ftlab_cuda_reset_peak(int device, char *err, size_t err_len) {
  FTLAB_PROTECT({ c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device)); })
}

// The CPU kernel set libtorch dispatches to ("DEFAULT", "AVX2", "AVX512"): chosen from the CPU
// and ATEN_CPU_CAPABILITY, it decides the last bits of every CPU result.
int ftlab_cpu_capability(char *out, size_t out_len, char *err, size_t err_len) {
  FTLAB_PROTECT({
    auto capability = at::get_cpu_capability();
    if (out_len > 0) {
      std::strncpy(out, capability.c_str(), out_len - 1);
      out[out_len - 1] = '\0';
    }
  })
}
}
