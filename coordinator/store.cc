#include "coordinator/store.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"

namespace sae {
namespace {

// A prepared statement that finalizes itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  void Text(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void Blob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  void Int(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  int Step() { return sqlite3_step(s_); }
  std::string ColBlob(int i) {
    const void* p = sqlite3_column_blob(s_, i);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(s_, i)) : std::string();
  }
  std::string ColText(int i) {
    const unsigned char* p = sqlite3_column_text(s_, i);
    return p ? std::string(reinterpret_cast<const char*>(p)) : std::string();
  }
  int64_t ColInt(int i) { return sqlite3_column_int64(s_, i); }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

absl::Status Err(sqlite3* db, const std::string& what) {
  return absl::InternalError(absl::StrCat("sqlite: ", what, ": ", sqlite3_errmsg(db)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("--db ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<JobStore> s(new JobStore(db));
  const char* schema =
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=NORMAL;"
      "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, request_id TEXT, state INTEGER,"
      "  created_ms INTEGER, job BLOB);"
      "CREATE TABLE IF NOT EXISTS transitions (job_id TEXT, time_ms INTEGER, from_state INTEGER,"
      "  to_state INTEGER, reason TEXT);"
      "CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info BLOB, state TEXT, job_id TEXT,"
      "  attempt INTEGER, rank INTEGER);"
      "CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT, attempt INTEGER, step INTEGER,"
      "  tokens INTEGER, path TEXT, time_ms INTEGER DEFAULT (CAST(strftime('%s','now') AS INTEGER)*1000));";
  SAE_RETURN_IF_ERROR(s->Exec(schema));
  return s;
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", m));
  }
  return absl::OkStatus();
}

absl::Status JobStore::PutJob(const v1::Job& job, const std::string& request_id) {
  Stmt st(db_, "INSERT OR REPLACE INTO jobs (id, request_id, state, created_ms, job) VALUES (?,?,?,?,?)");
  if (!st.ok()) return Err(db_, "prepare jobs");
  st.Text(1, job.id());
  st.Text(2, request_id);
  st.Int(3, job.state());
  st.Int(4, job.created_unix_ms());
  st.Blob(5, job.SerializeAsString());
  if (st.Step() != SQLITE_DONE) return Err(db_, "write job " + job.id());
  return absl::OkStatus();
}

absl::Status JobStore::AddTransition(const std::string& job_id, const v1::Transition& t) {
  Stmt st(db_, "INSERT INTO transitions (job_id, time_ms, from_state, to_state, reason) VALUES (?,?,?,?,?)");
  if (!st.ok()) return Err(db_, "prepare transitions");
  st.Text(1, job_id);
  st.Int(2, t.time_unix_ms());
  st.Int(3, t.from());
  st.Int(4, t.to());
  st.Text(5, t.reason());
  if (st.Step() != SQLITE_DONE) return Err(db_, "write transition");
  return absl::OkStatus();
}

absl::Status JobStore::PutWorker(const StoredWorker& w) {
  Stmt st(db_, "INSERT OR REPLACE INTO workers (id, info, state, job_id, attempt, rank) VALUES (?,?,?,?,?,?)");
  if (!st.ok()) return Err(db_, "prepare workers");
  st.Text(1, w.info.worker_id());
  st.Blob(2, w.info.SerializeAsString());
  st.Text(3, w.state);
  st.Text(4, w.job_id);
  st.Int(5, w.attempt);
  st.Int(6, w.rank);
  if (st.Step() != SQLITE_DONE) return Err(db_, "write worker");
  return absl::OkStatus();
}

absl::Status JobStore::AddCheckpoint(const std::string& job_id, int attempt, int64_t step, int64_t tokens,
                                     const std::string& path) {
  Stmt st(db_, "INSERT INTO checkpoints (job_id, attempt, step, tokens, path) VALUES (?,?,?,?,?)");
  if (!st.ok()) return Err(db_, "prepare checkpoints");
  st.Text(1, job_id);
  st.Int(2, attempt);
  st.Int(3, step);
  st.Int(4, tokens);
  st.Text(5, path);
  if (st.Step() != SQLITE_DONE) return Err(db_, "write checkpoint");
  return absl::OkStatus();
}

absl::Status JobStore::Begin() { return Exec("BEGIN IMMEDIATE"); }

absl::Status JobStore::Commit() { return Exec("COMMIT"); }

void JobStore::Rollback() {
  // SQLite may already have rolled back (a full disk, an I/O error).
  if (in_transaction()) Exec("ROLLBACK").IgnoreError();
}

bool JobStore::in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

absl::StatusOr<std::vector<std::pair<v1::Job, std::string>>> JobStore::LoadJobs() {
  std::vector<std::pair<v1::Job, std::string>> out;
  Stmt st(db_, "SELECT job, request_id FROM jobs ORDER BY created_ms, id");
  if (!st.ok()) return Err(db_, "prepare load jobs");
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    v1::Job j;
    if (!j.ParseFromString(st.ColBlob(0))) return absl::DataLossError("sqlite: a job row does not parse");
    out.emplace_back(std::move(j), st.ColText(1));
  }
  if (rc != SQLITE_DONE) return Err(db_, "load jobs");
  return out;
}

absl::StatusOr<std::vector<StoredWorker>> JobStore::LoadWorkers() {
  std::vector<StoredWorker> out;
  Stmt st(db_, "SELECT info, state, job_id, attempt, rank FROM workers");
  if (!st.ok()) return Err(db_, "prepare load workers");
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    StoredWorker w;
    if (!w.info.ParseFromString(st.ColBlob(0))) return absl::DataLossError("sqlite: a worker row does not parse");
    w.state = st.ColText(1);
    w.job_id = st.ColText(2);
    w.attempt = static_cast<int>(st.ColInt(3));
    w.rank = static_cast<int>(st.ColInt(4));
    out.push_back(std::move(w));
  }
  if (rc != SQLITE_DONE) return Err(db_, "load workers");
  return out;
}

}  // namespace sae
