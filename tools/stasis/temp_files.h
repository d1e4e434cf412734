// File: tools/stasis/temp_files.h
//
// The temporary files the writers stream into before publishing by rename:
// `<output>.stasis-tmp.<pid>.<n>` beside the output, `<pid>` the writing process and `<n>`
// a counter (snapshot/image_writer.cc for images, snapshot/safetensors_write.cc for
// `export`; tests/unit/cli_temp_files_test.cc holds both to this name). A writer that is
// killed leaves its file behind, so the CLI removes them: its own on SIGINT/SIGTERM/SIGHUP
// (interrupt.h), and those of processes that are gone (SIGKILL, a crash) before it writes
// the same output again.
#ifndef STASIS_TOOLS_STASIS_TEMP_FILES_H_
#define STASIS_TOOLS_STASIS_TEMP_FILES_H_

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

namespace stasis::cli {

// True when `name` (a directory entry) is a temporary file of an output whose file name is
// `output_name`: exactly "<output_name>.stasis-tmp.<pid>.<n>", both numbers decimal. Sets
// *pid.
bool ParseTempFileName(std::string_view output_name, std::string_view name, pid_t* pid);

enum class TempFiles {
  kOwn,    // written by this process (pid == getpid())
  kStale,  // written by a process that is gone: kill(pid, 0) fails with ESRCH, or a zombie
};

// Removes the temporary files of `output` that `which` selects and returns their paths
// (logging each stale one: it may have been large).
// Never fails: a directory that cannot be listed or a file that cannot be removed is
// skipped. kStale trusts the pid: it assumes the directory is written from this host and
// pid namespace (a live writer elsewhere whose pid is free here would lose its file and
// fail at its rename, without harm to the output); a pid that was reused keeps its file
// until that process is gone too.
std::vector<std::string> RemoveTempFiles(const std::string& output, TempFiles which);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_TEMP_FILES_H_
