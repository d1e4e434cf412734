// File: runtime/model_host.h
//
// What the runtime's lifecycle drives: one model that can be brought warm (restored onto its
// device and bound into the framework), released (device memory freed, addresses kept) and
// run. The lifecycle (lifecycle.h) decides when; a ModelHost only does what it is told, so
// tests substitute a fake one to exercise every transition without a framework. The runtime
// knows no framework: `stasis serve` hands it a TorchScript host
// (tools/stasis/torch_model_host.h).
//
// Thread safety: Load and Unload never run concurrently with anything else (the lifecycle
// serialises them); Infer may run concurrently with itself (the server's
// --max-concurrency). The const accessors may be called from any thread.
#ifndef STASIS_RUNTIME_MODEL_HOST_H_
#define STASIS_RUNTIME_MODEL_HOST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "stasis/restore.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis::runtime {

class ModelHost {
 public:
  virtual ~ModelHost() = default;
  // Makes the model warm. The first call restores the image and binds it; after Unload()
  // it restores the bytes again at the same addresses (no rebinding). `report` receives
  // the restore's phases.
  virtual Status Load(RestoreReport* report) = 0;
  // Releases the device memory, keeping address reservations. REQUIRES: loaded.
  virtual Status Unload() = 0;
  // Runs the model once. REQUIRES: loaded.
  virtual StatusOr<std::vector<TensorData>> Infer(const std::vector<TensorData>& inputs) = 0;
  // Device bytes held now (0 while unloaded).
  virtual uint64_t DeviceBytes() const = 0;
  // A human-readable name for logs and status ("model.stasis on cpu").
  virtual std::string Describe() const = 0;
};

}  // namespace stasis::runtime

#endif  // STASIS_RUNTIME_MODEL_HOST_H_
