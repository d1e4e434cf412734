#include "torch_adapter/forward.h"

#include <xxhash.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/numbers.h"
#include "common/stopwatch.h"
#include "snapshot/format.h"
#include "torch_adapter/dtype_map.h"
#include "torch_adapter/exception_status.h"
#include "torch_adapter/input_spec.h"
#include "torch_adapter/module_tensors.h"

namespace stasis::torch {

using internal::ExceptionStatus;

StatusOr<std::vector<TensorData>> ForwardModule(::torch::jit::Module& module,
                                                const std::vector<TensorData>& inputs) {
  try {
    const c10::Device device = ModuleDevice(module);
    std::vector<c10::IValue> args;
    args.reserve(inputs.size());
    for (const TensorData& in : inputs) {
      std::optional<at::ScalarType> type = ToScalarType(in.dtype);
      if (!type)
        return UnimplementedError("input '" + in.name + "': dtype " +
                                  std::string(DTypeName(in.dtype)) + " has no libtorch type");
      STASIS_ASSIGN_OR_RETURN(uint64_t count, format::ElementCount(in.shape));
      const uint64_t want = count * static_cast<uint64_t>(DTypeBits(in.dtype)) / 8;
      if (in.bytes.size() != want)
        return InvalidArgumentError("input '" + in.name + "' has " + Num(in.bytes.size()) +
                                    " bytes; its dtype and shape need " + Num(want));
      at::Tensor t = ::torch::empty(in.shape, at::TensorOptions().dtype(*type));
      if (want > 0) std::memcpy(t.data_ptr(), in.bytes.data(), want);
      args.emplace_back(device.is_cpu() ? t : t.to(device));
    }
    c10::IValue result;
    {
      c10::InferenceMode guard;
      result = module.forward(args);
    }
    std::vector<at::Tensor> outs;
    if (result.isTensor()) {
      outs.push_back(result.toTensor());
    } else if (result.isTuple() || result.isList()) {
      std::vector<c10::IValue> items;
      if (result.isTuple()) {
        for (const c10::IValue& e : result.toTuple()->elements()) items.push_back(e);
      } else {
        for (const c10::IValue& e : result.toList()) items.push_back(e);
      }
      for (const c10::IValue& e : items) {
        if (!e.isTensor())
          return UnimplementedError("forward() returned a " + e.tagKind() + " inside a " +
                                    result.tagKind() + "; only tensors can be returned");
        outs.push_back(e.toTensor());
      }
    } else {
      return UnimplementedError("forward() returned " + result.tagKind() + ", not tensors");
    }
    std::vector<TensorData> out;
    for (size_t i = 0; i < outs.size(); ++i) {
      at::Tensor t = outs[i].contiguous().cpu();
      std::optional<DType> dtype = ToDType(t.scalar_type());
      if (!dtype)
        return UnimplementedError("output " + Num(i) + " is " + ScalarTypeName(t.scalar_type()));
      TensorData d;
      d.name = outs.size() == 1 ? "output" : "output." + Num(i);
      d.dtype = *dtype;
      d.shape.assign(t.sizes().begin(), t.sizes().end());
      d.bytes.assign(static_cast<const char*>(t.data_ptr()), t.nbytes());
      out.push_back(std::move(d));
    }
    return out;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument, "forward() failed",
                           std::current_exception());
  }
}

StatusOr<InferenceResult> RunModule(::torch::jit::Module& module, std::string_view input_spec) {
  STASIS_ASSIGN_OR_RETURN(InputSpec spec, ParseInputSpec(input_spec));
  try {
    STASIS_ASSIGN_OR_RETURN(at::Tensor input, MakeInput(spec, ModuleDevice(module)));
    InferenceResult r;
    const Stopwatch t0;
    at::Tensor out;
    {
      c10::InferenceMode guard;
      c10::IValue v = module.forward({input});
      if (!v.isTensor())
        return InvalidArgumentError("forward() returned " + v.tagKind() + ", not a Tensor");
      out = v.toTensor().contiguous().cpu();
    }
    r.seconds = t0.Seconds();
    std::optional<DType> dtype = ToDType(out.scalar_type());
    r.dtype = dtype ? std::string(DTypeName(*dtype)) : ScalarTypeName(out.scalar_type());
    r.shape.assign(out.sizes().begin(), out.sizes().end());
    r.xxh3 = XXH3_64bits(out.data_ptr(), out.nbytes());
    return r;
  } catch (...) {
    return ExceptionStatus(StatusCode::kInvalidArgument,
                           "forward() on input '" + std::string(input_spec) + "' failed",
                           std::current_exception());
  }
}

}  // namespace stasis::torch
