// Device specs in text form: "cpu", "cuda", "cuda:N".
#include <string>

#include "stasis/device_backend.h"

namespace stasis {

StatusOr<DeviceSpec> ParseDeviceSpec(std::string_view text) {
  if (text == "cpu") return DeviceSpec{format::DeviceKind::kCpu, -1};
  if (text == "cuda") return DeviceSpec{format::DeviceKind::kCuda, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() <= 8) {
    int n = 0;
    for (char ch : text.substr(5)) {
      if (ch < '0' || ch > '9')
        return InvalidArgumentError("bad device '" + std::string(text) + "'");
      n = n * 10 + (ch - '0');
    }
    return DeviceSpec{format::DeviceKind::kCuda, n};
  }
  return InvalidArgumentError("bad device '" + std::string(text) +
                              "' (expected cpu, cuda or cuda:N)");
}

std::string DeviceSpecString(const DeviceSpec& d) {
  return d.kind == format::DeviceKind::kCpu ? "cpu" : "cuda:" + std::to_string(d.ordinal);
}

}  // namespace stasis
