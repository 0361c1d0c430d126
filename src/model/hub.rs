//! Resolves the `--model` argument: `demo`, a local folder, or a Hugging Face Hub repo id
//! (`owner/name`, optionally `owner/name@revision`) that is found in, or downloaded into, the
//! standard Hugging Face cache.
//!
//! The cache is hf-hub's: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub` (or [`ResolveOptions::cache_dir`]), laid out as
//! `models--owner--name/{refs/<revision>, snapshots/<commit>/, blobs/}`, so folders downloaded by
//! Python's `huggingface_hub` are found and the other way round.
//!
//! Only the files a model folder needs (Qwen3-VL and SigLIP alike) are fetched: `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` and `preprocessor_config.json` (both optional), and
//! `model.safetensors` or `model.safetensors.index.json` with every shard it names.
//!
//! What this module adds to hf-hub is only what hf-hub does not do: which files a model
//! needs (the shard index), `HF_HUB_OFFLINE`, timeouts and cancellation, and errors that
//! say what to do. Cache look-ups, downloads and the cache's layout are hf-hub's (its
//! cache-only `local_files_only` resolution replaces the 0.x `Cache::get`).
//!
//! Offline (`HF_HUB_OFFLINE=1`, or [`ResolveOptions::offline`]) nothing touches the network: the
//! snapshot must already be complete in the cache. Online, a branch or tag is resolved to its
//! commit with a `HEAD` request (files already in that commit's snapshot are not fetched again;
//! a commit hash whose snapshot is complete needs no request at all), and when the Hub cannot
//! be reached a complete cached snapshot is used instead, with a warning.
//!
//! hf-hub 1.0 offers no connect timeout without a hand-built `reqwest` client, so each transfer
//! runs on a worker thread watched from the caller's: no answer within 8 s means "the Hub could
//! not be reached", no new byte for 60 s means a stalled download, and
//! [`DownloadProgress::cancelled`] is polled twenty times a second. hf-hub cannot abort a
//! transfer in flight either: on cancellation or timeout the call returns at once and the
//! transfer is left to finish (or fail) in the background; asking for the same model again in
//! this process attaches to it instead of starting a second copy.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{HFClient, HFClientSync, HFError, HFRepositorySync, RepoTypeModel};

use super::error::{ModelError, Result};
use super::weights::{SINGLE_WEIGHTS, WEIGHT_INDEX, shard_names};

/// What `--model` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in demo backbone (no weights).
    Demo,
    /// A Hugging Face model folder on disk (a local folder, or a snapshot in the HF cache),
    /// canonicalised.
    Local(PathBuf),
}

/// How [`resolve_model`] treats Hub repo ids. `Default` gives the standard behaviour.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// `Some(true)`: never touch the network, use the cache only. `None`: read
    /// `HF_HUB_OFFLINE` (`1`, `true`, `yes` or `on` turn offline mode on).
    pub offline: Option<bool>,
    /// Branch, tag or commit; `owner/name@revision` in the argument wins. Default `main`.
    pub revision: Option<String>,
    /// The hub cache folder. `None`: hf-hub's default, which honours `HF_HUB_CACHE` and
    /// `HF_HOME`.
    pub cache_dir: Option<PathBuf>,
}

/// Receives download progress; every call comes from the thread that called
/// [`resolve_model`].
///
/// Every file the model needs is announced with `file_started` and closed with `file_done`,
/// also when it was already in the cache (then usually without `advanced`). Optional files
/// that the repository does not have are not announced.
pub trait DownloadProgress: Send {
    /// A file is being fetched; `bytes` is its size when known.
    fn file_started(&mut self, name: &str, bytes: Option<u64>);
    /// `bytes` more bytes of the current file arrived.
    fn advanced(&mut self, bytes: u64);
    /// The current file is complete in the cache.
    fn file_done(&mut self, name: &str);
    /// Polled between files and several times a second during a transfer; `true` stops
    /// [`resolve_model`] with a "download cancelled" error.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing and never cancels.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl DownloadProgress for NoProgress {
    fn file_started(&mut self, _name: &str, _bytes: Option<u64>) {}
    fn advanced(&mut self, _bytes: u64) {}
    fn file_done(&mut self, _name: &str) {}
}

/// Resolves `arg` (the `--model` argument) to the demo backbone or a model folder on disk,
/// downloading a Hub repo into the Hugging Face cache when needed.
///
/// - `demo` → [`ModelSource::Demo`];
/// - an existing folder (absolute, relative, `./…`, `~/…`) → [`ModelSource::Local`] with its
///   canonical path, even when its name also reads as a repo id; a path-looking argument that
///   does not exist is an error;
/// - `owner/name[@revision]` → the cache snapshot of that repo, complete with the files a
///   Qwen3-VL folder needs.
///
/// Blocks while downloading: call it from a worker thread in a GUI. Errors are
/// [`ModelError::ModelArg`] sentences that name the repo and what to do.
pub fn resolve_model(
    arg: &str,
    options: &ResolveOptions,
    progress: &mut dyn DownloadProgress,
) -> Result<ModelSource> {
    resolve_with(arg, options, progress, &HubSettings::default())
}

/// Knobs of the Hub client that callers do not need; the tests point them at a local fake Hub.
#[derive(Debug, Clone)]
struct HubSettings {
    /// `None`: `HF_ENDPOINT`, else `https://huggingface.co`.
    endpoint: Option<String>,
    /// How long a request may go without any answer before the Hub counts as unreachable
    /// (what a connect timeout would do).
    reach_timeout: Duration,
    /// How long a transfer may go without a new byte before it counts as stalled.
    stall_timeout: Duration,
    /// Retries of a failed request (hf-hub backs off exponentially from 100 ms).
    retries: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            reach_timeout: Duration::from_secs(8),
            stall_timeout: Duration::from_secs(60),
            retries: 2,
        }
    }
}

const DEFAULT_REVISION: &str = "main";
const OFFLINE_ENV: &str = "HF_HUB_OFFLINE";
const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "preprocessor_config.json"];
/// How often the caller's thread looks at a running transfer (and at `cancelled()`).
const TICK: Duration = Duration::from_millis(50);

fn resolve_with(
    arg: &str,
    options: &ResolveOptions,
    progress: &mut dyn DownloadProgress,
    settings: &HubSettings,
) -> Result<ModelSource> {
    let arg = arg.trim();
    if arg == "demo" {
        return Ok(ModelSource::Demo);
    }
    if arg.is_empty() {
        return Err(ModelError::ModelArg(
            "the model argument is empty: give `demo`, a model folder, or a Hugging Face repo id \
             such as `Qwen/Qwen3-VL-2B-Instruct`"
                .into(),
        ));
    }
    let path = expand_home(arg);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return canonical(&path).map(ModelSource::Local);
        }
        Ok(_) => {
            return Err(ModelError::ModelArg(format!(
                "{} is a file; --model wants the model folder (the one holding config.json)",
                path.display()
            )));
        }
        Err(e) if looks_like_path(arg) => {
            return Err(if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::ModelArg(format!("no such model folder: {}", path.display()))
            } else {
                ModelError::io(path, e)
            });
        }
        Err(_) => {}
    }
    let repo = RepoId::parse(arg, options.revision.as_deref())?;
    resolve_repo(&repo, options, progress, settings)
}

/// `~` and `~/…` to the home folder; anything else unchanged.
fn expand_home(arg: &str) -> PathBuf {
    let rest = if arg == "~" {
        Some("")
    } else {
        arg.strip_prefix("~/").or_else(|| arg.strip_prefix("~\\"))
    };
    match (
        rest,
        std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")),
    ) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(arg),
    }
}

/// Whether `arg` can only be meant as a path (so a miss is "no such folder", not a bad id).
fn looks_like_path(arg: &str) -> bool {
    arg.starts_with(['.', '/', '~', '\\'])
        || arg.contains('\\')
        || arg.ends_with('/')
        || Path::new(arg).is_absolute()
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| ModelError::io(path, e))
}

/// A Hub model repo and the revision asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepoId {
    owner: String,
    name: String,
    revision: String,
}

impl RepoId {
    fn parse(arg: &str, option_revision: Option<&str>) -> Result<Self> {
        let invalid = |why: &str| {
            ModelError::ModelArg(format!(
                "`{arg}` is neither an existing folder nor a valid Hugging Face repo id ({why}); \
                 a model is `demo`, a model folder, or `owner/name[@revision]` such as \
                 `Qwen/Qwen3-VL-2B-Instruct`"
            ))
        };
        if arg.chars().any(char::is_whitespace) {
            return Err(invalid("it contains spaces"));
        }
        let (repo, at_revision) = match arg.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (arg, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let [owner, name] = parts[..] else {
            return Err(invalid(
                "a repo id has exactly one `/`, between owner and name",
            ));
        };
        for (what, part) in [("owner", owner), ("name", name)] {
            if let Err(why) = check_id_part(part) {
                return Err(invalid(&format!("the {what} {why}")));
            }
        }
        let revision = match (at_revision, option_revision) {
            (Some(""), _) => return Err(invalid("nothing follows `@`")),
            (Some(rev), Some(opt)) if rev != opt => {
                return Err(ModelError::ModelArg(format!(
                    "`{arg}` asks for revision `{rev}` but the revision option says `{opt}`; \
                     give one of them"
                )));
            }
            (Some(rev), _) => rev,
            (None, Some(opt)) if !opt.trim().is_empty() => opt.trim(),
            (None, _) => DEFAULT_REVISION,
        };
        if revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
            || revision
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid(&format!("`{revision}` is not a revision name")));
        }
        Ok(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// `owner/name`.
    fn id(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// The Hub's rules for the owner and the name: 1 to 96 of `A-Z a-z 0-9 - _ .`, starting and
/// ending with a letter, digit or `_`, without `--` or `..`.
fn check_id_part(part: &str) -> std::result::Result<(), &'static str> {
    if part.is_empty() {
        return Err("is empty");
    }
    if part.len() > 96 {
        return Err("is longer than 96 characters");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may only hold letters, digits, `-`, `_` and `.`");
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
        return Err("must start and end with a letter, digit or `_`");
    }
    if part.contains("--") || part.contains("..") {
        return Err("may not contain `--` or `..`");
    }
    Ok(())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// `HF_HUB_OFFLINE`'s truthy spellings, as in Python's `huggingface_hub`.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn offline_from_env() -> bool {
    std::env::var(OFFLINE_ENV).is_ok_and(|v| is_truthy(&v))
}

/// A Hub-related failure, as a sentence naming the repo.
fn hub_error(repo: &str, msg: impl std::fmt::Display) -> ModelError {
    ModelError::ModelArg(format!("{repo}: {msg}"))
}

fn offline_error(repo: &RepoId, cache_dir: &Path, missing: Option<(&Path, &str)>) -> ModelError {
    let what = match missing {
        None => format!(
            "{} is not in the local Hugging Face cache ({})",
            repo.id(),
            cache_dir.display()
        ),
        Some((snapshot, file)) => format!(
            "{} is only partly in the local Hugging Face cache ({}): {file} is missing,",
            repo.id(),
            snapshot.display()
        ),
    };
    ModelError::ModelArg(format!(
        "{what} and HF_HUB_OFFLINE is set; download it on a machine with network or point \
         --model at a local folder"
    ))
}

fn cancelled_error(repo: &RepoId) -> ModelError {
    hub_error(&repo.id(), "download cancelled")
}

/// What the cache holds for a repo at a revision.
#[derive(Debug)]
enum Cached {
    /// No snapshot for the revision.
    Missing,
    /// A snapshot that lacks `missing`.
    Partial { snapshot: PathBuf, missing: String },
    /// A snapshot with every file the model needs.
    Complete(PathBuf),
}

/// Looks `revision` (a branch, tag or commit) of a repo up in the cache without any network
/// access, through hf-hub's cache-only resolution (`local_files_only`: the revision's ref,
/// the snapshot link, a dangling link counting as absent), one file a Qwen3-VL folder needs
/// at a time.
fn lookup_cache(hub: &HFRepositorySync<RepoTypeModel>, revision: &str) -> Result<Cached> {
    let cached = |file: &str| -> Option<PathBuf> {
        hub.download_file()
            .filename(file)
            .revision(revision)
            .local_files_only(true)
            .send()
            .ok()
    };
    let mut needed: Vec<String> = REQUIRED_FILES.iter().map(|f| (*f).to_owned()).collect();
    let single = cached(SINGLE_WEIGHTS);
    let index = if single.is_none() {
        cached(WEIGHT_INDEX)
    } else {
        None
    };
    let mut found = single.clone().or_else(|| index.clone());
    let mut missing = None;
    for file in &needed {
        match cached(file) {
            Some(path) => found = found.or(Some(path)),
            None => missing = missing.or_else(|| Some(file.clone())),
        }
    }
    // A snapshot is the folder of any file found in it.
    let Some(snapshot) = found
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
    else {
        return Ok(Cached::Missing);
    };
    if missing.is_none() && single.is_none() {
        match &index {
            None => missing = Some(format!("{SINGLE_WEIGHTS} (or {WEIGHT_INDEX})")),
            Some(index) => {
                needed = shard_names(index)?;
                missing = needed.iter().find(|f| cached(f).is_none()).cloned();
            }
        }
    }
    Ok(match missing {
        Some(missing) => Cached::Partial { snapshot, missing },
        None => Cached::Complete(snapshot),
    })
}

fn resolve_repo(
    repo: &RepoId,
    options: &ResolveOptions,
    progress: &mut dyn DownloadProgress,
    settings: &HubSettings,
) -> Result<ModelSource> {
    let offline = options.offline.unwrap_or_else(offline_from_env);
    let client = build_client(repo, options, settings, offline)?;
    let cache_dir = client.cache_dir().to_path_buf();
    let endpoint = client.endpoint().to_owned();
    let client = HFClientSync::from_inner(client)
        .map_err(|e| hub_error(&repo.id(), format!("cannot start the Hub client: {e}")))?;
    let hub = client.model(repo.owner.as_str(), repo.name.as_str());
    if offline {
        return match lookup_cache(&hub, &repo.revision)? {
            Cached::Complete(snapshot) => canonical(&snapshot).map(ModelSource::Local),
            Cached::Missing => Err(offline_error(repo, &cache_dir, None)),
            Cached::Partial { snapshot, missing } => {
                Err(offline_error(repo, &cache_dir, Some((&snapshot, &missing))))
            }
        };
    }
    // Online a damaged cache entry is not an error: the download repairs it.
    if is_commit_hash(&repo.revision)
        && let Ok(Cached::Complete(snapshot)) = lookup_cache(&hub, &repo.revision)
    {
        // A commit never changes: nothing to ask the Hub.
        return canonical(&snapshot).map(ModelSource::Local);
    }
    let mut fetcher = Fetcher {
        hub: hub.clone(),
        repo,
        key: format!("{endpoint}|{}|{}", cache_dir.display(), repo.id()),
        settings,
        progress,
    };
    match fetcher.fetch_model() {
        Ok(snapshot) => canonical(&snapshot).map(ModelSource::Local),
        Err(Failure::Model(e)) => Err(e),
        Err(Failure::Unreachable { file, detail }) => {
            if let Ok(Cached::Complete(snapshot)) = lookup_cache(&hub, &repo.revision) {
                tracing::warn!(
                    "{}: the Hugging Face Hub ({endpoint}) could not be reached ({detail}); \
                     using the cached snapshot {}",
                    repo.id(),
                    snapshot.display()
                );
                return canonical(&snapshot).map(ModelSource::Local);
            }
            Err(hub_error(
                &repo.id(),
                format!(
                    "the Hugging Face Hub ({endpoint}) could not be reached while fetching \
                     {file} ({detail}), and the model is not complete in the local cache ({}); \
                     check the network or proxy, or set HF_HUB_OFFLINE=1 and point --model at \
                     a local folder or a cached model",
                    cache_dir.display()
                ),
            ))
        }
    }
}

/// The hf-hub client (its builder resolves the cache folder from `HF_HUB_CACHE` / `HF_HOME`).
fn build_client(
    repo: &RepoId,
    options: &ResolveOptions,
    settings: &HubSettings,
    offline: bool,
) -> Result<HFClient> {
    let mut builder = HFClient::builder().retry_max_attempts(settings.retries);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.endpoint(endpoint.as_str());
    } else if offline {
        // Offline the endpoint is never used: a malformed HF_ENDPOINT must not stop us.
        builder = builder.endpoint("https://huggingface.co");
    }
    if let Some(dir) = &options.cache_dir {
        builder = builder.cache_dir(dir.clone());
    }
    builder
        .build()
        .map_err(|e| hub_error(&repo.id(), format!("cannot set up the Hub client: {e}")))
}

/// Why fetching a repo stopped.
enum Failure {
    /// The Hub did not answer (or answered with a server error): the cache may stand in.
    Unreachable {
        file: String,
        detail: String,
    },
    Model(ModelError),
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        Failure::Model(e)
    }
}

/// What a download worker tells the caller's thread.
enum Msg {
    /// The Hub answered; the file has this many bytes (0: unknown).
    Size(u64),
    /// This many bytes of the file are done (a running total).
    Bytes(u64),
    /// The worker finished.
    Done(std::result::Result<PathBuf, HFError>),
}

/// Forwards hf-hub's progress events (from its runtime thread) to the caller's thread.
struct Bridge {
    tx: Sender<Msg>,
    file: String,
}

impl ProgressHandler for Bridge {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        let msg = match event {
            DownloadEvent::Start { total_bytes, .. } => Msg::Size(*total_bytes),
            DownloadEvent::Progress { files } => {
                match files
                    .iter()
                    .filter(|f| f.filename == self.file)
                    .map(|f| f.bytes_completed)
                    .max()
                {
                    Some(done) => Msg::Bytes(done),
                    None => return,
                }
            }
            // One file per download, so the batch total is the file's.
            DownloadEvent::AggregateProgress {
                bytes_completed, ..
            } => Msg::Bytes(*bytes_completed),
            DownloadEvent::Complete => return,
        };
        // The caller may have stopped listening (cancelled, timed out): nothing to do then.
        let _ = self.tx.send(msg);
    }
}

/// One file's transfer as seen from the caller's thread.
struct Transfer {
    key: String,
    rx: Receiver<Msg>,
    /// Whether the Hub has answered.
    answered: bool,
    size: Option<u64>,
    bytes: u64,
}

impl Transfer {
    fn absorb(&mut self, msg: Msg) -> Option<std::result::Result<PathBuf, HFError>> {
        match msg {
            Msg::Size(size) => {
                self.answered = true;
                self.size = (size > 0).then_some(size);
            }
            Msg::Bytes(bytes) => {
                self.answered = true;
                self.bytes = self.bytes.max(bytes);
            }
            Msg::Done(result) => return Some(result),
        }
        None
    }
}

/// Transfers whose caller gave up (cancelled, timed out) while hf-hub kept going: a later
/// request for the same file attaches to them instead of racing them for the cache lock.
static ABANDONED: Mutex<Vec<Transfer>> = Mutex::new(Vec::new());

fn abandon(transfer: Transfer) {
    if let Ok(mut list) = ABANDONED.lock() {
        list.push(transfer);
    }
}

/// Takes the abandoned transfer for `key`, if one is still running, dropping finished ones.
fn reclaim(key: &str) -> Option<Transfer> {
    let mut list = ABANDONED.lock().ok()?;
    let mut found = None;
    let mut kept = Vec::new();
    for mut transfer in list.drain(..) {
        let mut finished = false;
        loop {
            match transfer.rx.try_recv() {
                Ok(msg) => {
                    if transfer.absorb(msg).is_some() {
                        // Done (the file is in the cache now, or it failed): start afresh.
                        finished = true;
                        break;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            continue;
        }
        if found.is_none() && transfer.key == key {
            found = Some(transfer);
        } else {
            kept.push(transfer);
        }
    }
    *list = kept;
    found
}

/// Fetches a repo's files through hf-hub, one worker thread per file, reporting to `progress`.
struct Fetcher<'a> {
    hub: HFRepositorySync<RepoTypeModel>,
    repo: &'a RepoId,
    /// Endpoint, cache folder and repo: with a file and revision, names a transfer.
    key: String,
    settings: &'a HubSettings,
    progress: &'a mut dyn DownloadProgress,
}

impl Fetcher<'_> {
    /// Fetches every file the model needs and returns the snapshot folder.
    fn fetch_model(&mut self) -> std::result::Result<PathBuf, Failure> {
        // The revision asked for resolves to a commit with the first file; the other files
        // come from that very commit, whatever is pushed meanwhile.
        let config = self.fetch_required("config.json", &self.repo.revision.clone())?;
        let snapshot = config
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| hub_error(&self.repo.id(), "hf-hub returned an odd cache path"))?;
        let commit = snapshot
            .file_name()
            .and_then(|c| c.to_str())
            .filter(|c| is_commit_hash(c))
            .map(str::to_owned)
            .ok_or_else(|| {
                hub_error(
                    &self.repo.id(),
                    format!("{} is not a cache snapshot folder", snapshot.display()),
                )
            })?;
        tracing::debug!(
            "{}@{} is commit {commit}",
            self.repo.id(),
            self.repo.revision
        );
        self.fetch_required("tokenizer.json", &commit)?;
        for file in OPTIONAL_FILES {
            self.fetch_optional(file, &commit)?;
        }
        if self.fetch_optional(SINGLE_WEIGHTS, &commit)?.is_none() {
            let Some(index) = self.fetch_optional(WEIGHT_INDEX, &commit)? else {
                return Err(hub_error(
                    &self.repo.id(),
                    format!(
                        "the repository has neither {SINGLE_WEIGHTS} nor {WEIGHT_INDEX} at \
                         revision `{}`; is it a safetensors checkpoint?",
                        self.repo.revision
                    ),
                )
                .into());
            };
            for shard in shard_names(&index)? {
                self.fetch_required(&shard, &commit)?;
            }
        }
        let missing = match lookup_cache(&self.hub, &commit)? {
            Cached::Complete(_) => return Ok(snapshot),
            Cached::Partial { missing, .. } => missing,
            Cached::Missing => "config.json".to_owned(),
        };
        Err(hub_error(
            &self.repo.id(),
            format!(
                "{missing} is still missing from {} after the download",
                snapshot.display()
            ),
        )
        .into())
    }

    fn fetch_required(
        &mut self,
        file: &str,
        revision: &str,
    ) -> std::result::Result<PathBuf, Failure> {
        match self.fetch_optional(file, revision)? {
            Some(path) => Ok(path),
            None => Err(hub_error(
                &self.repo.id(),
                format!(
                    "{file} was not found on the Hub at revision `{}`; check the repo id and \
                     the revision (a Qwen3-VL model folder is needed)",
                    self.repo.revision
                ),
            )
            .into()),
        }
    }

    /// The cached path of `file`, or `None` when the repository does not have it.
    fn fetch_optional(
        &mut self,
        file: &str,
        revision: &str,
    ) -> std::result::Result<Option<PathBuf>, Failure> {
        match self.fetch(file, revision)? {
            Ok(path) => Ok(Some(path)),
            Err(HFError::EntryNotFound { .. }) => Ok(None),
            Err(e) => Err(self.explain(file, e)),
        }
    }

    /// Downloads one file on a worker thread, relaying progress and watching for
    /// cancellation, silence and stalls. The inner result is hf-hub's.
    fn fetch(
        &mut self,
        file: &str,
        revision: &str,
    ) -> std::result::Result<std::result::Result<PathBuf, HFError>, Failure> {
        if self.progress.cancelled() {
            return Err(cancelled_error(self.repo).into());
        }
        let key = format!("{}|{revision}|{file}", self.key);
        let (mut transfer, mut reclaimed) = match reclaim(&key) {
            Some(transfer) => (transfer, true),
            None => (self.spawn(key.clone(), file, revision)?, false),
        };
        let mut announced = false;
        let mut reported = 0u64;
        let mut since = Instant::now();
        let mut last_bytes = transfer.bytes;
        loop {
            if transfer.answered && !announced {
                self.progress.file_started(file, transfer.size);
                announced = true;
            }
            if transfer.bytes > reported {
                self.progress.advanced(transfer.bytes - reported);
                reported = transfer.bytes;
            }
            if self.progress.cancelled() {
                abandon(transfer);
                return Err(cancelled_error(self.repo).into());
            }
            let msg = match transfer.rx.recv_timeout(TICK) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    let quiet = since.elapsed();
                    if !transfer.answered && quiet >= self.settings.reach_timeout {
                        abandon(transfer);
                        return Err(Failure::Unreachable {
                            file: file.to_owned(),
                            detail: format!(
                                "no answer within {}",
                                seconds(self.settings.reach_timeout)
                            ),
                        });
                    }
                    if transfer.answered && quiet >= self.settings.stall_timeout {
                        abandon(transfer);
                        return Err(hub_error(
                            &self.repo.id(),
                            format!(
                                "the download of {file} stalled (no data for {}); run again to \
                                 retry, or check the network",
                                seconds(self.settings.stall_timeout)
                            ),
                        )
                        .into());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(hub_error(
                        &self.repo.id(),
                        format!("the download of {file} stopped unexpectedly"),
                    )
                    .into());
                }
            };
            let was_answered = transfer.answered;
            match transfer.absorb(msg) {
                None => {
                    if transfer.answered != was_answered || transfer.bytes > last_bytes {
                        since = Instant::now();
                        last_bytes = transfer.bytes;
                    }
                }
                Some(Ok(path)) => {
                    if !announced {
                        let size = std::fs::metadata(&path).ok().map(|m| m.len());
                        self.progress.file_started(file, size.or(transfer.size));
                    }
                    if transfer.bytes > reported {
                        self.progress.advanced(transfer.bytes - reported);
                    }
                    self.progress.file_done(file);
                    return Ok(Ok(path));
                }
                Some(Err(e)) if reclaimed => {
                    // The abandoned attempt we attached to failed, possibly long ago: try once
                    // more for ourselves.
                    tracing::debug!("earlier download of {file} failed ({e}); retrying");
                    transfer = self.spawn(key.clone(), file, revision)?;
                    reclaimed = false;
                    since = Instant::now();
                    last_bytes = 0;
                }
                Some(Err(e)) => return Ok(Err(e)),
            }
        }
    }

    fn spawn(
        &self,
        key: String,
        file: &str,
        revision: &str,
    ) -> std::result::Result<Transfer, Failure> {
        let (tx, rx) = mpsc::channel();
        let bridge = Bridge {
            tx: tx.clone(),
            file: file.to_owned(),
        };
        let hub = self.hub.clone();
        let (file_owned, revision) = (file.to_owned(), revision.to_owned());
        std::thread::Builder::new()
            .name("agff-hf-download".into())
            .spawn(move || {
                let result = hub
                    .download_file()
                    .filename(file_owned)
                    .revision(revision)
                    .progress(bridge)
                    .send();
                let _ = tx.send(Msg::Done(result));
            })
            .map_err(|e| {
                hub_error(
                    &self.repo.id(),
                    format!("cannot start a download thread for {file}: {e}"),
                )
            })?;
        Ok(Transfer {
            key,
            rx,
            answered: false,
            size: None,
            bytes: 0,
        })
    }

    /// Turns an hf-hub error on `file` into what the user should read.
    fn explain(&self, file: &str, e: HFError) -> Failure {
        let id = self.repo.id();
        let msg = match e {
            HFError::Request { source, .. } => {
                return Failure::Unreachable {
                    file: file.to_owned(),
                    detail: error_chain(&source),
                };
            }
            HFError::Http { context } if context.status.is_server_error() => {
                return Failure::Unreachable {
                    file: file.to_owned(),
                    detail: format!("the Hub answered {}", context.status),
                };
            }
            HFError::AuthRequired { .. } | HFError::RepoNotFound { .. } => {
                "no such model on the Hugging Face Hub, or it is private or gated and needs a \
                 token (set HF_TOKEN or run `hf auth login`)"
                    .to_owned()
            }
            HFError::Forbidden { .. } => "the Hub refused access (403): the model is gated or \
                the token lacks access; accept its terms on huggingface.co and set HF_TOKEN"
                .to_owned(),
            HFError::RevisionNotFound { revision, .. } => {
                format!("revision `{revision}` does not exist on the Hub")
            }
            HFError::RateLimited { .. } => {
                "the Hub is rate-limiting requests; try again later (a token, HF_TOKEN, raises \
                 the limit)"
                    .to_owned()
            }
            HFError::CacheLockTimeout { path } => format!(
                "another process is downloading {file} into the cache (lock {}); wait for it \
                 to finish or try again",
                path.display()
            ),
            other => format!("fetching {file} failed: {other}"),
        };
        Failure::Model(hub_error(&id, msg))
    }
}

/// `e` and its sources, each said once, joined by `: `.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn seconds(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A temporary folder removed on drop (tests run in parallel: each gets its own).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("agff-hub-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Records every progress call; can cancel after some event.
    #[derive(Default)]
    struct Recorder {
        events: Vec<String>,
        bytes: u64,
        cancel_after_done: Option<usize>,
        cancel_on_start: Option<&'static str>,
        done: usize,
        cancel: bool,
    }

    impl DownloadProgress for Recorder {
        fn file_started(&mut self, name: &str, bytes: Option<u64>) {
            self.events.push(format!("start {name} {bytes:?}"));
            if self.cancel_on_start == Some(name) {
                self.cancel = true;
            }
        }
        fn advanced(&mut self, bytes: u64) {
            self.bytes += bytes;
        }
        fn file_done(&mut self, name: &str) {
            self.events.push(format!("done {name}"));
            self.done += 1;
            if self.cancel_after_done == Some(self.done) {
                self.cancel = true;
            }
        }
        fn cancelled(&self) -> bool {
            self.cancel
        }
    }

    fn offline(cache: &Path) -> ResolveOptions {
        ResolveOptions {
            offline: Some(true),
            revision: None,
            cache_dir: Some(cache.to_path_buf()),
        }
    }

    fn online(cache: &Path) -> ResolveOptions {
        ResolveOptions {
            offline: Some(false),
            ..offline(cache)
        }
    }

    fn err_text(result: Result<ModelSource>) -> String {
        match result {
            Ok(source) => panic!("expected an error, got {source:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Writes a cache entry the way hf-hub and huggingface_hub do: blobs, snapshot links and
    /// `refs/main`.
    fn fake_cache(cache: &Path, repo: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let snapshot = repo_dir.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(repo_dir.join("refs").join("main"), COMMIT).unwrap();
        for (name, content) in files {
            let blob = repo_dir
                .join("blobs")
                .join(blake3::hash(content).to_hex().as_str());
            std::fs::write(&blob, content).unwrap();
            let link = snapshot.join(name);
            #[cfg(unix)]
            std::os::unix::fs::symlink(&blob, &link).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, &link).unwrap();
        }
        snapshot
    }

    const SINGLE: &[(&str, &[u8])] = &[
        ("config.json", b"{}"),
        ("tokenizer.json", b"{}"),
        ("model.safetensors", b"weights"),
    ];

    fn sharded_index() -> Vec<u8> {
        br#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#.to_vec()
    }

    #[test]
    fn demo_is_the_demo_backbone() {
        let mut p = NoProgress;
        let got = resolve_model("demo", &ResolveOptions::default(), &mut p).unwrap();
        assert_eq!(got, ModelSource::Demo);
        let got = resolve_model(" demo ", &ResolveOptions::default(), &mut p).unwrap();
        assert_eq!(got, ModelSource::Demo);
    }

    #[test]
    fn existing_folder_is_local_and_canonical() {
        let tmp = TempDir::new("local");
        let dir = tmp.path().join("model");
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = NoProgress;
        let got = resolve_model(dir.to_str().unwrap(), &ResolveOptions::default(), &mut p);
        assert_eq!(
            got.unwrap(),
            ModelSource::Local(std::fs::canonicalize(&dir).unwrap())
        );
        // Non-canonical spellings of the same folder.
        let dotted = format!("{}/./model/../model/", tmp.path().display());
        let got = resolve_model(&dotted, &ResolveOptions::default(), &mut p).unwrap();
        assert_eq!(
            got,
            ModelSource::Local(std::fs::canonicalize(&dir).unwrap())
        );
        let got = resolve_model(".", &ResolveOptions::default(), &mut p).unwrap();
        assert_eq!(got, ModelSource::Local(std::fs::canonicalize(".").unwrap()));
    }

    #[test]
    fn a_file_is_not_a_model_folder() {
        let tmp = TempDir::new("file");
        let file = tmp.path().join("model.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let err = err_text(resolve_model(
            file.to_str().unwrap(),
            &ResolveOptions::default(),
            &mut NoProgress,
        ));
        assert!(
            err.contains("is a file") && err.contains("model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn missing_path_says_no_such_model_folder() {
        for arg in [
            "./no-such-agff-model",
            "/no/such/agff-model",
            "~/no-such-agff-model-dir",
            "../no-such-agff-model",
            "models/no-such-agff/",
        ] {
            let err = err_text(resolve_model(
                arg,
                &ResolveOptions::default(),
                &mut NoProgress,
            ));
            assert!(err.contains("no such model folder"), "{arg}: {err}");
            let shown = arg.trim_start_matches("~/").trim_end_matches('/');
            assert!(err.contains(shown), "{arg}: {err}");
        }
        if let Some(home) = std::env::var_os("HOME") {
            let err = err_text(resolve_model(
                "~/no-such-agff-model-dir",
                &ResolveOptions::default(),
                &mut NoProgress,
            ));
            assert!(err.contains(&*home.to_string_lossy()), "{err}");
        }
    }

    #[test]
    fn invalid_repo_ids_are_refused_clearly() {
        let cases = [
            ("a/b/c", "exactly one `/`"),
            ("", "empty"),
            ("   ", "empty"),
            ("owner/na me", "spaces"),
            ("just-a-name", "exactly one `/`"),
            ("owner/@main", "name is empty"),
            ("owner//name", "exactly one `/`"),
            ("-owner/name", "must start and end"),
            ("owner/na--me", "`--`"),
            ("owner/na$me", "letters, digits"),
            ("owner/name@", "nothing follows `@`"),
            ("owner/name@a/../b", "not a revision"),
        ];
        for (arg, why) in cases {
            let err = err_text(resolve_model(
                arg,
                &ResolveOptions::default(),
                &mut NoProgress,
            ));
            assert!(err.contains(why), "{arg:?}: {err}");
            if !arg.trim().is_empty() {
                assert!(err.contains(&format!("`{arg}`")), "{arg:?}: {err}");
            }
        }
    }

    #[test]
    fn repo_ids_and_revisions_parse() {
        let id = RepoId::parse("Qwen/Qwen3-VL-2B-Instruct", None).unwrap();
        assert_eq!(id.id(), "Qwen/Qwen3-VL-2B-Instruct");
        assert_eq!(id.revision, "main");
        assert_eq!(RepoId::parse("o/n@v1.0", None).unwrap().revision, "v1.0");
        assert_eq!(
            RepoId::parse("o/n@refs/pr/3", None).unwrap().revision,
            "refs/pr/3"
        );
        assert_eq!(RepoId::parse("o/n", Some("dev")).unwrap().revision, "dev");
        assert_eq!(
            RepoId::parse("o/n@dev", Some("dev")).unwrap().revision,
            "dev"
        );
        let err = RepoId::parse("o/n@a", Some("b")).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("`b`"), "{err}");
        assert!(RepoId::parse("o_1/n.2-x", None).is_ok());
    }

    #[test]
    fn offline_env_values() {
        for yes in ["1", "true", "TRUE", "yes", "On", " 1 "] {
            assert!(is_truthy(yes), "{yes}");
        }
        for no in ["", "0", "false", "no", "off", "2"] {
            assert!(!is_truthy(no), "{no}");
        }
    }

    #[test]
    fn offline_resolves_a_cached_snapshot() {
        let cache = TempDir::new("offline-hit");
        let snapshot = fake_cache(cache.path(), "owner/name", SINGLE);
        let want = ModelSource::Local(std::fs::canonicalize(&snapshot).unwrap());
        let opts = offline(cache.path());
        let mut p = Recorder::default();
        assert_eq!(resolve_model("owner/name", &opts, &mut p).unwrap(), want);
        assert!(p.events.is_empty(), "{:?}", p.events);
        let by_commit = format!("owner/name@{COMMIT}");
        assert_eq!(resolve_model(&by_commit, &opts, &mut p).unwrap(), want);
        let by_option = ResolveOptions {
            revision: Some("main".into()),
            ..offline(cache.path())
        };
        assert_eq!(
            resolve_model("owner/name", &by_option, &mut p).unwrap(),
            want
        );
    }

    #[test]
    fn offline_miss_says_exactly_that() {
        let cache = TempDir::new("offline-miss");
        fake_cache(cache.path(), "owner/name", SINGLE);
        let err = err_text(resolve_model(
            "owner/other",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert_eq!(
            err,
            format!(
                "owner/other is not in the local Hugging Face cache ({}) and \
                 HF_HUB_OFFLINE is set; download it on a machine with network or point --model \
                 at a local folder",
                cache.path().display()
            )
        );
        // A branch that was never downloaded is a miss too.
        let err = err_text(resolve_model(
            "owner/name@dev",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert!(
            err.contains("owner/name is not in the local Hugging Face cache"),
            "{err}"
        );
    }

    #[test]
    fn offline_partial_snapshot_names_the_missing_file() {
        let cache = TempDir::new("offline-partial");
        fake_cache(
            cache.path(),
            "owner/name",
            &[("config.json", b"{}"), ("model.safetensors", b"w")],
        );
        let err = err_text(resolve_model(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert!(
            err.contains("tokenizer.json is missing") && err.contains("HF_HUB_OFFLINE is set"),
            "{err}"
        );
    }

    #[test]
    fn offline_sharded_snapshot_needs_every_shard() {
        let cache = TempDir::new("offline-shards");
        let index = sharded_index();
        let snapshot = fake_cache(
            cache.path(),
            "owner/name",
            &[
                ("config.json", b"{}"),
                ("tokenizer.json", b"{}"),
                ("model.safetensors.index.json", &index),
                ("model-00001-of-00002.safetensors", b"one"),
            ],
        );
        let err = err_text(resolve_model(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert!(
            err.contains("model-00002-of-00002.safetensors is missing"),
            "{err}"
        );
        std::fs::write(snapshot.join("model-00002-of-00002.safetensors"), b"two").unwrap();
        let got = resolve_model("owner/name", &offline(cache.path()), &mut NoProgress).unwrap();
        assert_eq!(
            got,
            ModelSource::Local(std::fs::canonicalize(&snapshot).unwrap())
        );
    }

    #[test]
    fn shard_names_may_not_leave_the_folder() {
        let cache = TempDir::new("offline-evil");
        fake_cache(
            cache.path(),
            "owner/name",
            &[
                ("config.json", b"{}"),
                ("tokenizer.json", b"{}"),
                (
                    "model.safetensors.index.json",
                    br#"{"weight_map":{"a":"../../../../etc/passwd"}}"#,
                ),
            ],
        );
        let err = err_text(resolve_model(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert!(
            err.contains("not a file name inside the model folder"),
            "{err}"
        );
    }

    #[test]
    fn dangling_cache_links_count_as_missing() {
        let cache = TempDir::new("offline-dangling");
        let snapshot = fake_cache(cache.path(), "owner/name", SINGLE);
        let blob = std::fs::canonicalize(snapshot.join("model.safetensors")).unwrap();
        std::fs::remove_file(blob).unwrap();
        let err = err_text(resolve_model(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
        ));
        assert!(err.contains("model.safetensors"), "{err}");
    }

    // ---- Online, against a fake Hub on 127.0.0.1 (no traffic leaves the machine) ----

    /// A repo the fake Hub serves.
    #[derive(Clone, Default)]
    struct FakeRepo {
        id: String,
        files: HashMap<String, Vec<u8>>,
        /// A file whose GET sends the headers and then nothing.
        stall: Option<String>,
    }

    impl FakeRepo {
        fn new(id: &str, files: &[(&str, &[u8])]) -> Self {
            Self {
                id: id.into(),
                files: files
                    .iter()
                    .map(|(n, c)| (n.to_string(), c.to_vec()))
                    .collect(),
                stall: None,
            }
        }
    }

    /// Answers hf-hub's `HEAD`/`GET …/resolve/<rev>/<file>` like huggingface.co does, one
    /// request per connection. `silent`: accept connections and never answer.
    struct FakeHub {
        addr: SocketAddr,
        requests: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl FakeHub {
        fn start(repo: FakeRepo, silent: bool) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (count, halt, repo) = (requests.clone(), stop.clone(), Arc::new(repo));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if halt.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let repo = repo.clone();
                    let count = count.clone();
                    std::thread::spawn(move || {
                        if silent {
                            std::thread::sleep(Duration::from_secs(30));
                        } else {
                            serve(conn, &repo, &count);
                        }
                    });
                }
            });
            Self {
                addr,
                requests,
                stop,
            }
        }

        fn settings(&self) -> HubSettings {
            HubSettings {
                endpoint: Some(format!("http://{}", self.addr)),
                reach_timeout: Duration::from_secs(1),
                stall_timeout: Duration::from_secs(1),
                retries: 0,
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::Relaxed)
        }
    }

    impl Drop for FakeHub {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = TcpStream::connect(self.addr);
        }
    }

    fn serve(conn: TcpStream, repo: &FakeRepo, count: &AtomicUsize) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut if_none_match = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("if-none-match")
            {
                if_none_match = Some(value.trim().to_owned());
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        let mut words = line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let mut out = conn;
        let mut respond = |status: &str, headers: &[(&str, String)], body: &[u8]| {
            let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            if method == "GET" {
                let _ = out.write_all(body);
            }
            let _ = out.flush();
        };
        let Some(rest) = target.strip_prefix(&format!("/{}/resolve/", repo.id)) else {
            // huggingface.co answers 401 for repos that do not exist (or are private).
            let msg = b"Repository not found";
            respond(
                "401 Unauthorized",
                &[
                    ("X-Error-Code", "RepoNotFound".into()),
                    ("Content-Length", msg.len().to_string()),
                ],
                msg,
            );
            return;
        };
        let (revision, file) = rest.split_once('/').unwrap_or((rest, ""));
        if revision != "main" && revision != COMMIT {
            respond(
                "404 Not Found",
                &[
                    ("X-Error-Code", "RevisionNotFound".into()),
                    ("Content-Length", "0".into()),
                ],
                b"",
            );
            return;
        }
        let Some(content) = repo.files.get(file) else {
            respond(
                "404 Not Found",
                &[
                    ("X-Error-Code", "EntryNotFound".into()),
                    ("X-Repo-Commit", COMMIT.into()),
                    ("Content-Length", "0".into()),
                ],
                b"",
            );
            return;
        };
        let headers = [
            (
                "ETag",
                format!("\"{}\"", blake3::hash(content).to_hex().as_str()),
            ),
            ("X-Repo-Commit", COMMIT.into()),
            ("Content-Length", content.len().to_string()),
        ];
        if if_none_match.as_deref() == Some(headers[0].1.as_str()) {
            respond("304 Not Modified", &headers[..2], b"");
            return;
        }
        if method == "GET" && repo.stall.as_deref() == Some(file) {
            let mut head = "HTTP/1.1 200 OK\r\nConnection: close\r\n".to_owned();
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = out.write_all(head.as_bytes());
            let _ = out.write_all(&content[..1]);
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        respond("200 OK", &headers, content);
    }

    /// Loopback tests cannot work through an HTTP proxy from the environment.
    fn proxied() -> bool {
        let proxied = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
        if proxied {
            eprintln!("skipped: an HTTP proxy is set, the fake Hub on 127.0.0.1 is unreachable");
        }
        proxied
    }

    #[test]
    fn hub_download_fills_the_cache_and_reports_progress() {
        if proxied() {
            return;
        }
        let weights = vec![7u8; 100_000];
        let hub = FakeHub::start(
            FakeRepo::new(
                "owner/name",
                &[
                    ("config.json", b"{\"a\":1}"),
                    ("tokenizer.json", b"{\"t\":2}"),
                    ("preprocessor_config.json", b"{}"),
                    ("model.safetensors", &weights),
                ],
            ),
            false,
        );
        let cache = TempDir::new("hub-single");
        let mut p = Recorder::default();
        let got =
            resolve_with("owner/name", &online(cache.path()), &mut p, &hub.settings()).unwrap();
        let snapshot = cache
            .path()
            .join("models--owner--name/snapshots")
            .join(COMMIT);
        assert_eq!(
            got,
            ModelSource::Local(std::fs::canonicalize(&snapshot).unwrap())
        );
        assert_eq!(
            std::fs::read(snapshot.join("model.safetensors")).unwrap(),
            weights
        );
        assert_eq!(
            std::fs::read_to_string(cache.path().join("models--owner--name/refs/main")).unwrap(),
            COMMIT
        );
        assert_eq!(
            p.events,
            [
                "start config.json Some(7)",
                "done config.json",
                "start tokenizer.json Some(7)",
                "done tokenizer.json",
                "start preprocessor_config.json Some(2)",
                "done preprocessor_config.json",
                "start model.safetensors Some(100000)",
                "done model.safetensors",
            ]
        );
        assert_eq!(p.bytes, 7 + 7 + 2 + 100_000);

        // Now it resolves offline, and online again without downloading anything.
        let got2 = resolve_with(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        );
        assert_eq!(got2.unwrap(), got);
        let mut p = Recorder::default();
        let got3 = resolve_with("owner/name", &online(cache.path()), &mut p, &hub.settings());
        assert_eq!(got3.unwrap(), got);
        assert_eq!(p.bytes, 0, "{:?}", p.events);
    }

    /// A SigLIP repo (as google/siglip-base-patch16-224 is laid out) resolves through the
    /// Hub and loads as a SigLIP backbone; the SentencePiece file it also holds is not
    /// fetched.
    #[test]
    fn hub_resolves_a_siglip_repo_that_loads() {
        if proxied() {
            return;
        }
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/siglip/tiny");
        let read = |f: &str| std::fs::read(tiny.join(f)).unwrap();
        let names = [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "preprocessor_config.json",
            "model.safetensors",
            "spiece.model",
        ];
        let contents: Vec<Vec<u8>> = names.iter().map(|f| read(f)).collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&contents)
            .map(|(n, c)| (*n, c.as_slice()))
            .collect();
        let hub = FakeHub::start(
            FakeRepo::new("google/siglip-base-patch16-224", &files),
            false,
        );
        let cache = TempDir::new("hub-siglip");
        let mut p = Recorder::default();
        let got = resolve_with(
            "google/siglip-base-patch16-224",
            &online(cache.path()),
            &mut p,
            &hub.settings(),
        )
        .unwrap();
        let ModelSource::Local(dir) = got else {
            panic!("expected a local snapshot, got {got:?}");
        };
        assert!(!dir.join("spiece.model").exists());
        let model = crate::model::loader::load_folder(
            &dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(model.default_perspectives().perspectives.len(), 1);
        assert_eq!(model.identity().preprocess, "siglip 32x32 bicubic");
    }

    #[test]
    fn hub_download_fetches_every_shard() {
        if proxied() {
            return;
        }
        let index = sharded_index();
        let hub = FakeHub::start(
            FakeRepo::new(
                "owner/sharded",
                &[
                    ("config.json", b"{}"),
                    ("tokenizer.json", b"{}"),
                    ("model.safetensors.index.json", &index),
                    ("model-00001-of-00002.safetensors", b"one"),
                    ("model-00002-of-00002.safetensors", b"two"),
                ],
            ),
            false,
        );
        let cache = TempDir::new("hub-sharded");
        let mut p = Recorder::default();
        let got = resolve_with(
            "owner/sharded",
            &online(cache.path()),
            &mut p,
            &hub.settings(),
        );
        let ModelSource::Local(dir) = got.unwrap() else {
            panic!("not local")
        };
        assert_eq!(
            std::fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(),
            b"two"
        );
        assert!(
            p.events
                .contains(&"done model-00001-of-00002.safetensors".to_owned())
        );
        assert!(
            !p.events
                .iter()
                .any(|e| e.contains("start model.safetensors "))
        );
    }

    #[test]
    fn hub_shard_missing_on_the_hub_is_named() {
        if proxied() {
            return;
        }
        let index = sharded_index();
        let hub = FakeHub::start(
            FakeRepo::new(
                "owner/sharded",
                &[
                    ("config.json", b"{}"),
                    ("tokenizer.json", b"{}"),
                    ("model.safetensors.index.json", &index),
                    ("model-00001-of-00002.safetensors", b"one"),
                ],
            ),
            false,
        );
        let cache = TempDir::new("hub-shard-gone");
        let err = err_text(resolve_with(
            "owner/sharded",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("model-00002-of-00002.safetensors was not found on the Hub"),
            "{err}"
        );
    }

    #[test]
    fn hub_cached_commit_needs_no_request() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), false);
        let cache = TempDir::new("hub-commit");
        let snapshot = fake_cache(cache.path(), "owner/name", SINGLE);
        let arg = format!("owner/name@{COMMIT}");
        let got = resolve_with(
            &arg,
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        );
        assert_eq!(
            got.unwrap(),
            ModelSource::Local(std::fs::canonicalize(&snapshot).unwrap())
        );
        assert_eq!(hub.requests(), 0);
    }

    #[test]
    fn hub_offline_never_asks_the_hub() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), false);
        let cache = TempDir::new("hub-offline");
        let err = err_text(resolve_with(
            "owner/name",
            &offline(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
        assert_eq!(hub.requests(), 0);
    }

    #[test]
    fn hub_cancel_between_files() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), false);
        let cache = TempDir::new("hub-cancel");
        let mut p = Recorder {
            cancel_after_done: Some(1),
            ..Recorder::default()
        };
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut p,
            &hub.settings(),
        ));
        assert_eq!(err, "owner/name: download cancelled");
        assert_eq!(p.events, ["start config.json Some(2)", "done config.json"]);
    }

    #[test]
    fn hub_cancel_during_a_transfer_returns_at_once() {
        if proxied() {
            return;
        }
        let mut repo = FakeRepo::new("owner/name", SINGLE);
        repo.stall = Some("model.safetensors".into());
        let hub = FakeHub::start(repo, false);
        let cache = TempDir::new("hub-cancel-mid");
        let mut p = Recorder {
            cancel_on_start: Some("model.safetensors"),
            ..Recorder::default()
        };
        let mut settings = hub.settings();
        settings.stall_timeout = Duration::from_secs(20);
        let t = Instant::now();
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut p,
            &settings,
        ));
        assert!(err.ends_with("download cancelled"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(!p.events.contains(&"done model.safetensors".to_owned()));
    }

    #[test]
    fn hub_stalled_transfer_times_out() {
        if proxied() {
            return;
        }
        let mut repo = FakeRepo::new("owner/name", SINGLE);
        repo.stall = Some("model.safetensors".into());
        let hub = FakeHub::start(repo, false);
        let cache = TempDir::new("hub-stall");
        let t = Instant::now();
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("the download of model.safetensors stalled (no data for 1 s)"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// An endpoint that refuses connections: a port that was just free.
    fn refused_endpoint() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}")
    }

    #[test]
    fn hub_unreachable_is_reported_quickly() {
        if proxied() {
            return;
        }
        let settings = HubSettings {
            endpoint: Some(refused_endpoint()),
            retries: 2,
            ..HubSettings::default()
        };
        let cache = TempDir::new("hub-refused");
        let t = Instant::now();
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &settings,
        ));
        let took = t.elapsed();
        assert!(
            err.starts_with("owner/name: the Hugging Face Hub (http://127.0.0.1:")
                && err.contains("could not be reached while fetching config.json")
                && err.contains("not complete in the local cache")
                && err.contains("HF_HUB_OFFLINE=1"),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn hub_silent_is_unreachable_after_the_reach_timeout() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), true);
        let cache = TempDir::new("hub-silent");
        let t = Instant::now();
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("could not be reached while fetching config.json (no answer within 1 s)"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }

    #[test]
    fn hub_unreachable_falls_back_to_a_complete_cache() {
        if proxied() {
            return;
        }
        let cache = TempDir::new("hub-fallback");
        let snapshot = fake_cache(cache.path(), "owner/name", SINGLE);
        let want = ModelSource::Local(std::fs::canonicalize(&snapshot).unwrap());
        let refused = HubSettings {
            endpoint: Some(refused_endpoint()),
            retries: 0,
            ..HubSettings::default()
        };
        let got = resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &refused,
        );
        assert_eq!(got.unwrap(), want);
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), true);
        let got = resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        );
        assert_eq!(got.unwrap(), want);
    }

    #[test]
    fn hub_unknown_repo_and_revision_are_clear() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(FakeRepo::new("owner/name", SINGLE), false);
        let cache = TempDir::new("hub-unknown");
        let err = err_text(resolve_with(
            "owner/other",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("owner/other: no such model on the Hugging Face Hub")
                && err.contains("HF_TOKEN"),
            "{err}"
        );
        let err = err_text(resolve_with(
            "owner/name@nope",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("config.json was not found on the Hub at revision `nope`"),
            "{err}"
        );
    }

    #[test]
    fn hub_missing_tokenizer_is_named() {
        if proxied() {
            return;
        }
        let hub = FakeHub::start(
            FakeRepo::new(
                "owner/name",
                &[("config.json", b"{}"), ("model.safetensors", b"w")],
            ),
            false,
        );
        let cache = TempDir::new("hub-no-tokenizer");
        let err = err_text(resolve_with(
            "owner/name",
            &online(cache.path()),
            &mut NoProgress,
            &hub.settings(),
        ));
        assert!(
            err.contains("tokenizer.json was not found on the Hub"),
            "{err}"
        );
    }
}
