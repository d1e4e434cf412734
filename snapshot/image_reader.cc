#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "common/hash.h"
#include "common/numbers.h"
#include "common/thread_pool.h"
#include "snapshot/codec.h"
#include "snapshot/format.h"
#include "stasis/image.h"

namespace stasis {

StatusOr<std::unique_ptr<ImageReader>> ImageReader::Open(const std::string& path, FileSystem* fs) {
  if (fs == nullptr) fs = DefaultFileSystem();
  std::unique_ptr<ImageReader> r(new ImageReader());
  r->path_ = path;
  STASIS_ASSIGN_OR_RETURN(r->file_, fs->OpenRandomAccess(path));
  const uint64_t size = r->file_->Size();
  const std::string where = "'" + path + "'";
  std::string header(format::kHeaderSize, '\0');
  STASIS_ASSIGN_OR_RETURN(size_t got, r->file_->ReadAt(0, header.size(), header.data()));
  header.resize(got);
  if (got >= 8 && std::string_view(header.data(), 8) != std::string_view(format::kHeaderMagic, 8))
    return InvalidArgumentError(where + " is not a stasis image (bad header magic)");
  if (size < format::kHeaderSize + format::kFooterSize)
    return OutOfRangeError(where + " is truncated: " + Num(size) +
                           " bytes, an image has at least " +
                           Num(format::kHeaderSize + format::kFooterSize));
  auto version = format::DecodeHeader(header);
  if (!version.ok()) return version.status().WithContext(where);

  std::string footer(format::kFooterSize, '\0');
  STASIS_RETURN_IF_ERROR(
      r->file_->ReadExact(size - format::kFooterSize, footer.size(), footer.data(), "footer"));
  auto f = format::DecodeFooter(footer);
  if (!f.ok()) {
    if (f.status().code() == StatusCode::kInvalidArgument)
      return OutOfRangeError(where + " is truncated or has trailing bytes: no footer at EOF");
    return f.status().WithContext(where);
  }
  r->footer_ = *f;
  if (r->footer_.format_version != *version)
    return UnimplementedError(where + ": the header says format version " + Num(*version) +
                              ", the footer version " + Num(r->footer_.format_version));
  if (r->footer_.file_size != size) {
    return DataLossError(where + ": footer says the file has " + Num(r->footer_.file_size) +
                         " bytes, it has " + Num(size));
  }
  std::string manifest(r->footer_.manifest_size, '\0');
  STASIS_RETURN_IF_ERROR(r->file_->ReadExact(r->footer_.manifest_offset, manifest.size(),
                                             manifest.data(), "manifest"));
  if (Xxh3(manifest.data(), manifest.size()) != r->footer_.manifest_xxh3)
    return DataLossError(where + ": manifest checksum mismatch");
  auto parsed = format::ParseStoredManifest(manifest, r->footer_);
  if (!parsed.ok()) return parsed.status().WithContext(where);
  r->manifest_ = std::move(parsed).value();
  return r;
}

Status ImageReader::ReadChunk(size_t index, void* dst, ChunkDecoder* decoder,
                              std::vector<uint8_t>* stored_buf, bool verify_raw) const {
  if (index >= manifest_.chunks.size()) return InvalidArgumentError("no chunk " + Num(index));
  const format::ChunkInfo& c = manifest_.chunks[index];
  const std::string what = "chunk " + Num(index);
  std::vector<uint8_t> own_buf;
  if (stored_buf == nullptr) stored_buf = &own_buf;
  uint8_t* stored;
  if (c.codec == format::Codec::kRaw) {
    stored = static_cast<uint8_t*>(dst);  // raw chunks are read straight into place
  } else {
    stored_buf->resize(c.stored_size);
    stored = stored_buf->data();
  }
  STASIS_RETURN_IF_ERROR(file_->ReadExact(c.file_offset, c.stored_size, stored, what));
  if (Xxh3(stored, c.stored_size) != c.stored_xxh3)
    return DataLossError(what + ": checksum mismatch in stored bytes (file offset " +
                         Num(c.file_offset) + ")");
  if (c.codec != format::Codec::kRaw) {
    std::unique_ptr<ChunkDecoder> own_decoder;
    if (decoder == nullptr) decoder = (own_decoder = std::make_unique<ChunkDecoder>()).get();
    STASIS_RETURN_IF_ERROR(decoder->Decode(c, index, stored, dst));
    if (verify_raw && Xxh3(dst, c.raw_size) != c.raw_xxh3)
      return DataLossError(what + ": checksum mismatch in decoded bytes");
  }
  return OkStatus();
}

StatusOr<std::string> ImageReader::ReadSection(std::string_view name) const {
  const format::SectionInfo* s = manifest_.FindSection(name);
  if (s == nullptr) return NotFoundError("no section '" + std::string(name) + "' in the image");
  std::string out(s->size, '\0');
  if (s->size > 0) {
    STASIS_RETURN_IF_ERROR(
        file_->ReadExact(s->file_offset, s->size, out.data(), "section '" + s->name + "'"));
  }
  if (Xxh3(out.data(), out.size()) != s->xxh3)
    return DataLossError("section '" + s->name + "': checksum mismatch");
  return out;
}

Status ImageReader::CheckPadding(std::vector<Status>* errors) const {
  std::vector<std::pair<uint64_t, uint64_t>> blocks;
  for (const auto& c : manifest_.chunks) blocks.emplace_back(c.file_offset, c.stored_size);
  for (const auto& s : manifest_.sections)
    if (s.size > 0) blocks.emplace_back(s.file_offset, s.size);
  std::sort(blocks.begin(), blocks.end());
  std::vector<char> buf;
  uint64_t pos = format::kHeaderSize;
  auto check_gap = [&](uint64_t from, uint64_t to) -> Status {
    // Gaps are normally < 4 KiB; read large ones in pieces so memory stays bounded.
    constexpr uint64_t kPiece = 1 << 20;
    for (uint64_t off = from; off < to; off += kPiece) {
      size_t n = static_cast<size_t>(std::min(kPiece, to - off));
      buf.resize(n);
      STASIS_RETURN_IF_ERROR(file_->ReadExact(off, n, buf.data(), "padding"));
      for (size_t i = 0; i < n; ++i) {
        if (buf[i] != 0) {
          errors->push_back(
              DataLossError("padding byte at file offset " + Num(off + i) + " is not zero"));
          return OkStatus();
        }
      }
    }
    return OkStatus();
  };
  for (const auto& [off, size] : blocks) {
    if (off > pos) STASIS_RETURN_IF_ERROR(check_gap(pos, off));
    pos = off + size;
  }
  return check_gap(pos, footer_.manifest_offset);
}

StatusOr<VerifyReport> ImageReader::Verify(const VerifyOptions& options) const {
  VerifyReport report;
  std::mutex mu;
  std::vector<std::pair<size_t, Status>> chunk_errors;
  std::atomic<uint64_t> done_bytes{0};
  std::atomic<size_t> next{0};
  const size_t n = manifest_.chunks.size();
  {
    int threads = std::min<int>(ThreadPool::ResolveThreadCount(options.threads),
                                static_cast<int>(std::max<size_t>(n, 1)));
    ThreadPool pool(threads);
    for (int t = 0; t < threads; ++t) {
      pool.Submit([&] {
        ChunkDecoder decoder;
        std::vector<uint8_t> stored, raw;
        for (size_t i = next++; i < n; i = next++) {
          const auto& c = manifest_.chunks[i];
          raw.resize(c.raw_size);
          Status s = ReadChunk(i, raw.data(), &decoder, &stored, /*verify_raw=*/true);
          uint64_t total = done_bytes += c.stored_size;
          if (options.progress) options.progress(total);
          if (!s.ok()) {
            std::lock_guard<std::mutex> lock(mu);
            chunk_errors.emplace_back(i, std::move(s));
          }
        }
      });
    }
  }  // joins
  std::sort(chunk_errors.begin(), chunk_errors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [i, s] : chunk_errors) report.errors.push_back(std::move(s));
  report.stored_bytes = manifest_.StoredBytes();
  report.raw_bytes = manifest_.RawBytes();
  report.chunks_checked = n;
  for (const auto& s : manifest_.sections) {
    auto bytes = ReadSection(s.name);
    if (!bytes.ok()) report.errors.push_back(bytes.status());
    ++report.sections_checked;
  }
  Status pad = CheckPadding(&report.errors);
  if (!pad.ok()) report.errors.push_back(pad);
  if (report.errors.size() > options.max_errors) report.errors.resize(options.max_errors);
  return report;
}

}  // namespace stasis
