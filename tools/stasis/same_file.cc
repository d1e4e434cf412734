#include "tools/stasis/same_file.h"

#include <sys/stat.h>

namespace stasis::cli {

Status CheckOutputIsNotAnInput(const std::vector<std::string>& inputs, const std::string& output) {
  struct stat out;
  if (::stat(output.c_str(), &out) != 0) return OkStatus();
  for (const std::string& input : inputs) {
    struct stat in;
    if (::stat(input.c_str(), &in) != 0) continue;
    if (in.st_dev == out.st_dev && in.st_ino == out.st_ino) {
      const bool same_name = input == output;
      return InvalidArgumentError(
          "output '" + output + "' " +
          (same_name ? "is the input" : "is the same file as the input '" + input + "'") +
          ": writing it would replace the input; choose another output");
    }
  }
  return OkStatus();
}

}  // namespace stasis::cli
