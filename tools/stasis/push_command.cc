// `stasis push`: a local image uploaded to s3:// (restore/io/s3_upload.h), and the upload
// behind `stasis snapshot -o s3://`.
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include "restore/io/remote_location.h"
#include "restore/io/s3_upload.h"
#include "stasis/image.h"
#include "stasis/remote.h"
#include "tools/stasis/cli_common.h"
#include "tools/stasis/commands.h"
#include "tools/stasis/interrupt.h"
#include "tools/stasis/remote_flags.h"
#include "tools/stasis/temp_files.h"

namespace stasis::cli {
namespace {

using Json = nlohmann::ordered_json;

// ---- interrupts ---------------------------------------------------------------------------
//
// As interrupt.h, with an upload in between: a signal while the image is written (snapshot)
// or checked removes the temporary image and exits 128 + the signal at once; one while the
// upload runs cancels it, so that the multipart upload is aborted, and the command then
// exits 128 + the signal; a second one exits at once (the upload may then stay open until a
// lifecycle rule removes it).

std::atomic<bool> g_cancel{false};
std::atomic<int> g_signal{0};
std::mutex g_mu;
std::string g_temp_image;  // a local file to remove on the way out ("" none)
bool g_uploading = false;

// Removes the temporary image and the writer's temporary files for it.
std::string RemoveTempImage(const std::string& path) {
  std::string removed;
  if (path.empty()) return removed;
  for (const std::string& p : RemoveTempFiles(path, TempFiles::kOwn)) removed += "; removed " + p;
  if (::unlink(path.c_str()) == 0) removed += "; removed " + path;
  return removed;
}

[[noreturn]] void WaitForInterrupts() {
  const sigset_t set = InterruptSignals();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    std::lock_guard<std::mutex> lock(g_mu);
    const bool first = g_signal.exchange(sig) == 0;
    if (first && g_uploading) {
      g_cancel.store(true);
      std::fprintf(stderr, "\nstasis: interrupted by %s; aborting the upload\n",
                   InterruptSignalName(sig));
      std::fflush(stderr);
      continue;
    }
    const std::string removed = RemoveTempImage(g_temp_image);
    std::fprintf(stderr, "\nstasis: interrupted by %s%s%s\n", InterruptSignalName(sig),
                 removed.c_str(), g_uploading ? "; the multipart upload may stay open" : "");
    std::fflush(stderr);
    ::_exit(128 + sig);  // as interrupt.cc: other threads still run
  }
}

// The thread that takes the signals (interrupt.h). Call before any other thread starts.
Status HandleInterrupts() { return StartInterruptThread(WaitForInterrupts); }

void SetUploading(bool uploading) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_uploading = uploading;
}

void SetTempImage(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_temp_image = path;
}

// The exit status of a command whose upload failed with `s`.
int UploadFailed(const Status& s) {
  const int code = ReportError(s);
  const int sig = g_signal.load();
  return s.code() == StatusCode::kCancelled && sig != 0 ? 128 + sig : code;
}

// ---- the upload -------------------------------------------------------------------------

std::string Rate(const S3UploadReport& r) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MB/s",
                r.seconds > 0 ? static_cast<double>(r.bytes) / r.seconds / 1e6 : 0.0);
  return b;
}

PushOutcome Outcome(const std::string& image, const S3UploadReport& r) {
  PushOutcome o;
  o.location = r.location;
  o.json = {{"image", image},
            {"location", r.location},
            {"bytes", r.bytes},
            {"multipart", r.multipart},
            {"parts", r.parts},
            {"part_size", r.part_size},
            {"concurrency", r.concurrency},
            {"retries", r.retries},
            {"etag", r.etag},
            {"seconds", r.seconds},
            {"mb_per_s", r.seconds > 0 ? static_cast<double>(r.bytes) / r.seconds / 1e6 : 0.0}};
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f s", r.seconds);
  o.text = "pushed " + image + " to " + r.location + ": " + HumanBytes(r.bytes) + " in " +
           (r.multipart ? std::to_string(r.parts) + " parts of " + HumanBytes(r.part_size) + " (" +
                              std::to_string(r.concurrency) + " at once)"
                        : std::string("one request")) +
           (r.retries ? ", " + std::to_string(r.retries) + " requests retried" : std::string()) +
           ", in " + secs + ", " + Rate(r);
  return o;
}

// Uploads `image` with the interrupts handled; the progress bar on stderr unless `quiet`.
StatusOr<PushOutcome> Upload(const std::string& image, const std::string& location,
                             S3UploadOptions options, bool quiet) {
  uint64_t size = 0;
  {
    struct stat st;
    if (::stat(image.c_str(), &st) == 0) size = static_cast<uint64_t>(st.st_size);
  }
  ProgressBar bar("push", size, !quiet);
  options.cancel = &g_cancel;
  options.progress = [&bar](uint64_t sent) { bar.Update(sent); };
  S3UploadReport report;
  SetUploading(true);
  Status s = UploadToS3(image, location, options, &report);
  SetUploading(false);
  bar.Done();
  if (!s.ok()) return s;
  return Outcome(image, report);
}

// Fails unless `location` is s3://BUCKET/KEY with settings that resolve (credentials,
// endpoint), before anything is read or written.
Status CheckS3Location(const std::string& location, const RemoteOptions& remote) {
  STASIS_ASSIGN_OR_RETURN(ResolvedLocation loc,
                          ResolveLocation(location, remote, RemoteEnvironment::Process()));
  if (!loc.s3)
    return InvalidArgumentError("images are pushed to s3://BUCKET/KEY, not '" + loc.display +
                                "' (http(s):// locations are read-only)");
  return OkStatus();
}

// A new empty file in $TMPDIR (else /tmp) for the image to be written to.
StatusOr<std::string> MakeTempImagePath() {
  const char* dir = std::getenv("TMPDIR");
  std::string path =
      std::string(dir != nullptr && dir[0] != 0 ? dir : "/tmp") + "/stasis-snapshot-XXXXXX.stasis";
  const int fd = ::mkstemps(path.data(), 7);
  if (fd < 0) return ErrnoToStatus(errno, "creating a temporary file in " + path);
  ::close(fd);
  return path;
}

}  // namespace

int RunPush(const PushArgs& a) {
  // First, while this is the only thread.
  if (Status s = HandleInterrupts(); !s.ok())
    std::fprintf(stderr, "stasis: warning: %s; an interrupted push may leave its upload open\n",
                 s.ToString().c_str());
  const RemoteOptions remote = ToRemoteOptions(a.remote);
  if (Status s = CheckS3Location(a.location, remote); !s.ok()) return ReportError(s);
  if (IsRemoteLocation(a.image))
    return ReportError(InvalidArgumentError("push uploads a local image; '" +
                                            RedactLocation(a.image) + "' is remote"));
  auto size = ParseSize(a.part_size);
  if (!size.ok()) return ReportError(size.status());
  // Only images: a typo'd path or another file must not replace one in the bucket.
  if (auto reader = ImageReader::Open(a.image); !reader.ok())
    return ReportError(reader.status().WithContext("refusing to push '" + a.image +
                                                   "', which is not a valid image"));
  S3UploadOptions options;
  options.remote = remote;
  options.part_size = *size;
  options.concurrency = a.concurrency;
  auto pushed = Upload(a.image, a.location, options, a.quiet || a.json);
  if (!pushed.ok()) return UploadFailed(pushed.status());
  if (a.json)
    std::cout << DumpJson(pushed->json) << "\n";
  else
    std::printf("%s\n", pushed->text.c_str());
  return kExitOk;
}

int SnapshotToS3(
    const SnapshotArgs& a,
    const std::function<int(const SnapshotArgs& local, const PushWrittenImage& push)>& write) {
  // First, while this is the only thread.
  if (Status s = HandleInterrupts(); !s.ok())
    std::fprintf(stderr,
                 "stasis: warning: %s; an interrupted snapshot may leave a temporary file\n",
                 s.ToString().c_str());
  if (Status s = CheckS3Location(a.output, RemoteOptions()); !s.ok()) return ReportError(s);
  auto temp = MakeTempImagePath();
  if (!temp.ok()) return ReportError(temp.status());
  SetTempImage(*temp);
  SnapshotArgs local = a;
  local.output = *temp;
  local.force = true;  // the empty file that holds the name
  const int rc = write(local, [&]() -> StatusOr<PushOutcome> {
    // The image was written by this process just now: checked as it was written.
    return Upload(*temp, a.output, S3UploadOptions(), a.quiet || a.json);
  });
  SetTempImage("");
  RemoveTempImage(*temp);
  const int sig = g_signal.load();
  return rc != kExitOk && sig != 0 ? 128 + sig : rc;
}

}  // namespace stasis::cli
