// File: tools/stasis/same_file.h
//
// The guard of the commands that read one file and write another (`snapshot`, `export`,
// `bench` when it makes an image): an output that names an input is refused before any
// work is done, --force or not, since publishing it would replace the input.
#ifndef STASIS_TOOLS_STASIS_SAME_FILE_H_
#define STASIS_TOOLS_STASIS_SAME_FILE_H_

#include <string>
#include <vector>

#include "stasis/status.h"

namespace stasis::cli {

// kInvalidArgument when `output` is the same file as one of `inputs`: the same device and
// inode once symbolic links are followed (the path itself, a symlink to it, a hard link).
// An output that does not exist yet (or cannot be examined) passes: the writer reports
// what is wrong with it in its own words; so does an input that cannot be examined.
Status CheckOutputIsNotAnInput(const std::vector<std::string>& inputs, const std::string& output);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_SAME_FILE_H_
