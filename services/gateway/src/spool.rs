//! The edge spool: a signed, verified webhook that the hub did not store in
//! time is kept on the gateway's disk, and forwarded in order when NATS
//! answers again (ADR 0011).
//!
//! Twilio does not retry a 5xx unless told to, so a 503 while NATS is away
//! loses the person's message. Instead the gateway appends the ready-made
//! publish (subject, `Nats-Msg-Id`, payload) to an append-only segment file,
//! `fsync`s it, and only then answers 200. A forwarder task publishes the
//! oldest record, awaits JetStream's ack, and only then moves a durable
//! cursor past it. A crash before the cursor moved publishes that record
//! again with the same `Nats-Msg-Id`, which the stream's duplicate window
//! swallows: nothing lost, nothing doubled.
//!
//! On disk, in the spool directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: records, each
//!   `len: u32 LE | crc32(body): u32 LE | body`, where body is
//!   `spooled_at_ms: u64 LE | subject_len: u16 LE | subject | id_len: u16 LE | id | payload`.
//!   A torn tail (a crash mid-append, before the 200) fails its length or
//!   checksum and is cut off when the spool is opened.
//! - `cursor`: `segment: u64 LE | offset: u64 LE | crc32: u32 LE`, the next
//!   record to forward. Segments before it are deleted; when everything is
//!   forwarded, every file is.
//!
//! While anything is spooled, new webhooks are spooled behind it, so the
//! hub receives them in the order they were accepted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Spool settings.
#[derive(clap::Args, Debug, Clone)]
pub struct SpoolArgs {
    /// Directory of the edge spool: webhooks the hub did not acknowledge in
    /// time are kept here, fsynced, until forwarded. Keep it on a
    /// persistent volume.
    #[arg(
        long = "spool-dir",
        env = "NWD_GATEWAY_SPOOL_DIR",
        default_value = ".data/gateway-spool"
    )]
    pub dir: PathBuf,
    /// Most bytes the spool may hold on disk; beyond it webhooks are refused
    /// with 503 (and `nwd_gateway_spool_refused_total` rises).
    #[arg(
        long = "spool-max-bytes",
        env = "NWD_GATEWAY_SPOOL_MAX_BYTES",
        default_value_t = 64 * 1024 * 1024
    )]
    pub max_bytes: u64,
}

/// Why a record could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0} bytes)")]
    Full(u64),
    #[error("spool i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// One spooled publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
    /// When it was spooled (Unix milliseconds).
    pub spooled_at_ms: u64,
}

/// Where a pending record sits on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    segment: u64,
    offset: u64,
    len: u64,
    spooled_at_ms: u64,
}

const HEADER: usize = 8;
const CURSOR_FILE: &str = "cursor";
const CURSOR_LEN: usize = 20;
const SEGMENT_EXT: &str = "seg";
/// Largest record body accepted when reading (a corrupt length beyond it is a torn tail).
const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// The spool's files and its in-memory index of pending records. Every
/// method does blocking file I/O: call it from `spawn_blocking`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    depth: AtomicU64,
    full: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Segment files in order; the last one takes appends.
    segments: VecDeque<Segment>,
    active: Option<File>,
    pending: VecDeque<Position>,
    disk_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    len: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: scans every segment, cuts a
    /// torn tail off the last one, and indexes every record not yet
    /// forwarded.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let cursor = read_cursor(&dir.join(CURSOR_FILE));
        let mut seqs: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                (path.extension()? == SEGMENT_EXT)
                    .then(|| path.file_stem()?.to_str()?.parse::<u64>().ok())
                    .flatten()
            })
            .collect();
        seqs.sort_unstable();
        let mut state = State::default();
        let last = seqs.last().copied();
        for seq in seqs {
            let path = segment_path(dir, seq);
            if cursor.is_some_and(|(c, _)| seq < c) {
                fs::remove_file(&path)?;
                continue;
            }
            let bytes = fs::read(&path)?;
            let (records, valid) = scan(&bytes);
            let mut len = bytes.len() as u64;
            if valid < len {
                tracing::warn!(
                    segment = seq,
                    valid,
                    len,
                    "spool segment ends in a torn or corrupt record; ignoring it"
                );
                if Some(seq) == last {
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(valid)?;
                    file.sync_all()?;
                    len = valid;
                }
            }
            let start = match cursor {
                Some((c, offset)) if c == seq => offset,
                _ => 0,
            };
            state.pending.extend(
                records
                    .into_iter()
                    .filter(|(offset, _, _)| *offset >= start)
                    .map(|(offset, rec_len, spooled_at_ms)| Position {
                        segment: seq,
                        offset,
                        len: rec_len,
                        spooled_at_ms,
                    }),
            );
            state.disk_bytes += len;
            state.segments.push_back(Segment { seq, len });
        }
        let spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(4096, 4 * 1024 * 1024),
            depth: AtomicU64::new(state.pending.len() as u64),
            full: AtomicBool::new(false),
            state: Mutex::new(state),
        };
        {
            let mut state = spool.lock()?;
            if state.pending.is_empty() {
                spool.clear(&mut state)?;
            } else if let Some(seg) = state.segments.back().copied() {
                state.active = Some(OpenOptions::new().write(true).open(spool.path(seg.seq))?);
            }
        }
        Ok(spool)
    }

    /// Records waiting to be forwarded.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// Whether the last append was refused for lack of room (until a record
    /// is forwarded).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().map(|s| s.disk_bytes).unwrap_or(0)
    }

    /// How long the oldest pending record has waited.
    pub fn oldest_age(&self) -> Duration {
        let oldest = self
            .lock()
            .ok()
            .and_then(|s| s.pending.front().map(|p| p.spooled_at_ms));
        oldest.map_or(Duration::ZERO, |at| {
            Duration::from_millis(now_ms().saturating_sub(at))
        })
    }

    /// Appends a record and fsyncs it; when this returns `Ok`, the record
    /// survives a crash.
    pub fn append(&self, subject: &str, msg_id: &str, payload: &[u8]) -> Result<(), SpoolError> {
        let spooled_at_ms = now_ms();
        let record = encode(subject, msg_id, payload, spooled_at_ms);
        let rec_len = record.len() as u64;
        let mut state = self.lock()?;
        if state.disk_bytes + rec_len > self.max_bytes {
            self.full.store(true, Ordering::SeqCst);
            return Err(SpoolError::Full(self.max_bytes));
        }
        let rotate = match (state.segments.back(), &state.active) {
            (Some(seg), Some(_)) => seg.len > 0 && seg.len + rec_len > self.segment_bytes,
            _ => true,
        };
        if rotate {
            let seq = state.segments.back().map_or(1, |s| s.seq + 1);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.path(seq))?;
            sync_dir(&self.dir)?;
            state.segments.push_back(Segment { seq, len: 0 });
            state.active = Some(file);
        }
        let (Some(seg), Some(file)) = (state.segments.back().copied(), state.active.as_ref())
        else {
            return Err(SpoolError::Io(io::Error::other("no active segment")));
        };
        let written = file
            .write_all_at(&record, seg.len)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Leave no half record behind for the next append to follow.
            let _ = file.set_len(seg.len);
            return Err(e.into());
        }
        if let Some(last) = state.segments.back_mut() {
            last.len += rec_len;
        }
        state.disk_bytes += rec_len;
        state.pending.push_back(Position {
            segment: seg.seq,
            offset: seg.len,
            len: rec_len,
            spooled_at_ms,
        });
        self.depth.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The oldest record not yet forwarded.
    pub fn head(&self) -> io::Result<Option<(Position, Record)>> {
        let state = self.lock()?;
        let Some(pos) = state.pending.front().copied() else {
            return Ok(None);
        };
        let file = File::open(self.path(pos.segment))?;
        let mut buf = vec![0; usize::try_from(pos.len).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, pos.offset)?;
        match decode(&buf) {
            Some(record) => Ok(Some((pos, record))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "spooled record changed on disk",
            )),
        }
    }

    /// Marks the record at `pos` forwarded (the hub acknowledged it): moves
    /// the durable cursor past it and deletes what is no longer needed.
    pub fn advance(&self, pos: &Position) -> io::Result<()> {
        let mut state = self.lock()?;
        if state.pending.front() != Some(pos) {
            return Ok(());
        }
        state.pending.pop_front();
        self.depth.fetch_sub(1, Ordering::SeqCst);
        self.full.store(false, Ordering::SeqCst);
        match state.pending.front().copied() {
            None => {
                // Cursor past the end first: a crash while deleting forwards nothing again.
                write_cursor(&self.dir, pos.segment, pos.offset + pos.len)?;
                self.clear(&mut state)
            }
            Some(next) => {
                write_cursor(&self.dir, next.segment, next.offset)?;
                while let Some(seg) = state.segments.front().copied() {
                    if seg.seq >= next.segment {
                        break;
                    }
                    fs::remove_file(self.path(seg.seq))?;
                    state.disk_bytes -= seg.len;
                    state.segments.pop_front();
                }
                Ok(())
            }
        }
    }

    /// Deletes every segment and the cursor: the spool is empty.
    fn clear(&self, state: &mut State) -> io::Result<()> {
        state.active = None;
        while let Some(seg) = state.segments.pop_front() {
            fs::remove_file(self.path(seg.seq))?;
        }
        match fs::remove_file(self.dir.join(CURSOR_FILE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        state.disk_bytes = 0;
        sync_dir(&self.dir)
    }

    fn path(&self, seq: u64) -> PathBuf {
        segment_path(&self.dir, seq)
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("spool lock poisoned"))
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_cursor(path: &Path) -> Option<(u64, u64)> {
    let bytes = fs::read(path).ok()?;
    let bytes: &[u8; CURSOR_LEN] = bytes.get(..CURSOR_LEN)?.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    if crc32(&bytes[..16]) != crc {
        tracing::warn!(
            "spool cursor is corrupt; forwarding from the oldest segment (deduplicated by the hub)"
        );
        return None;
    }
    let seq = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let offset = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some((seq, offset))
}

/// Overwrites the cursor in place (one 20-byte write, checksummed) and
/// fsyncs it.
fn write_cursor(dir: &Path, seq: u64, offset: u64) -> io::Result<()> {
    let path = dir.join(CURSOR_FILE);
    let created = !path.exists();
    let mut buf = [0u8; CURSOR_LEN];
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32(&buf[..16]);
    buf[16..].copy_from_slice(&crc.to_le_bytes());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    file.write_all_at(&buf, 0)?;
    file.sync_data()?;
    if created {
        sync_dir(dir)?;
    }
    Ok(())
}

/// One record, framed.
pub fn encode(subject: &str, msg_id: &str, payload: &[u8], spooled_at_ms: u64) -> Vec<u8> {
    let subject = &subject.as_bytes()[..subject.len().min(u16::MAX as usize)];
    let msg_id = &msg_id.as_bytes()[..msg_id.len().min(u16::MAX as usize)];
    let mut body = Vec::with_capacity(12 + subject.len() + msg_id.len() + payload.len());
    body.extend_from_slice(&spooled_at_ms.to_le_bytes());
    body.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    body.extend_from_slice(subject);
    body.extend_from_slice(&(msg_id.len() as u16).to_le_bytes());
    body.extend_from_slice(msg_id);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one framed record (header included); `None` if torn or corrupt.
fn decode(framed: &[u8]) -> Option<Record> {
    let len = u32::from_le_bytes(framed.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(framed.get(4..8)?.try_into().ok()?);
    let body = framed.get(HEADER..HEADER + len)?;
    if crc32(body) != crc {
        return None;
    }
    let spooled_at_ms = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let (subject, rest) = take_str(body.get(8..)?)?;
    let (msg_id, payload) = take_str(rest)?;
    Some(Record {
        subject,
        msg_id,
        payload: Bytes::copy_from_slice(payload),
        spooled_at_ms,
    })
}

fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let n = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(bytes.get(2..2 + n)?).ok()?;
    Some((s.to_owned(), bytes.get(2 + n..)?))
}

/// Walks a segment's records: (offset, framed length, spooled_at_ms) of
/// each valid one, and the length of the valid prefix. Stops at the first
/// record that is short or fails its checksum.
fn scan(bytes: &[u8]) -> (Vec<(u64, u64, u64)>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len > MAX_RECORD {
            break;
        }
        let end = at + HEADER + len as usize;
        let Some(record) = bytes.get(at..end).and_then(decode) else {
            break;
        };
        out.push((at as u64, (end - at) as u64, record.spooled_at_ms));
        at = end;
    }
    (out, at as u64)
}

/// CRC-32 (IEEE 802.3, as zlib and gzip use), for torn-write detection.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

// ------------------------------------------------------------ hand-off

/// What became of a webhook handed to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// JetStream stored it.
    Stored,
    /// JetStream already had it (same `Nats-Msg-Id`).
    Duplicate,
    /// The hub did not answer in time; it is on the spool's disk.
    Spooled,
}

/// Why a webhook could be neither stored nor spooled: the only 503s left.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the hub did not store it and the spool is full")]
    SpoolFull,
    #[error("the hub did not store it and the spool failed: {0}")]
    SpoolFailed(io::Error),
    #[error("the message is larger than the bus accepts")]
    TooLarge,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::SpoolFull => "full",
            Refusal::SpoolFailed(_) => "io",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// The gateway's link to the hub: publish and await the ack, or spool and
/// forward later. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    js: jetstream::Context,
    spool: Arc<Spool>,
    publish_timeout: Duration,
    spooled: Notify,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("spool_depth", &self.inner.spool.depth())
            .finish_non_exhaustive()
    }
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Hub {
    pub fn new(js: jetstream::Context, spool: Spool, publish_timeout: Duration) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                js,
                spool: Arc::new(spool),
                publish_timeout,
                spooled: Notify::new(),
            }),
        };
        hub.record_gauges();
        hub
    }

    /// The spool, for readiness and inspection.
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// Stores a webhook on the hub, or failing that on the spool. The
    /// normal path is unchanged: publish, await the ack. Only while the
    /// spool is empty and NATS is connected is a direct publish tried;
    /// otherwise the webhook queues behind what is spooled, keeping order.
    pub async fn hand_off(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<Handoff, Refusal> {
        if self.inner.spool.is_empty() && self.connected() {
            match self.publish(&subject, msg_id, payload.clone()).await {
                Ok(published) if published.duplicate => return Ok(Handoff::Duplicate),
                Ok(_) => return Ok(Handoff::Stored),
                Err(Failure::Permanent) => return Err(self.refused(Refusal::TooLarge)),
                Err(Failure::Transient(reason)) => {
                    tracing::warn!(reason, "the hub did not store the webhook; spooling it");
                }
            }
        }
        let spool = self.inner.spool.clone();
        let id = msg_id.to_owned();
        let appended = tokio::task::spawn_blocking(move || spool.append(&subject, &id, &payload))
            .await
            .unwrap_or_else(|e| Err(SpoolError::Io(io::Error::other(e))));
        self.record_gauges();
        match appended {
            Ok(()) => {
                metrics::counter!("nwd_gateway_spooled_total").increment(1);
                self.inner.spooled.notify_one();
                Ok(Handoff::Spooled)
            }
            Err(SpoolError::Full(limit)) => {
                tracing::error!(limit, "the spool is full; refusing the webhook with 503");
                Err(self.refused(Refusal::SpoolFull))
            }
            Err(SpoolError::Io(e)) => {
                tracing::error!(error = %e, "cannot write the spool; refusing the webhook with 503");
                Err(self.refused(Refusal::SpoolFailed(e)))
            }
        }
    }

    /// Forwards spooled records to the hub, oldest first, each after the
    /// previous one's ack, until `stop` fires. Retries with backoff while
    /// the hub does not answer; what is left stays on disk for the next start.
    pub async fn forward(&self, stop: CancellationToken) {
        let mut retry = RETRY_MIN;
        loop {
            self.record_gauges();
            let spool = self.inner.spool.clone();
            let head = tokio::task::spawn_blocking(move || spool.head())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            let (pos, record) = match head {
                Ok(Some(head)) => head,
                Ok(None) => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.inner.spooled.notified() => continue,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; retrying");
                    if pause(&stop, &mut retry).await {
                        return;
                    }
                    continue;
                }
            };
            if !self.connected() {
                if pause(&stop, &mut retry).await {
                    return;
                }
                continue;
            }
            let published = tokio::select! {
                () = stop.cancelled() => return,
                p = self.publish(&record.subject, &record.msg_id, record.payload.clone()) => p,
            };
            match published {
                Ok(published) => {
                    let spool = self.inner.spool.clone();
                    let advanced = tokio::task::spawn_blocking(move || spool.advance(&pos))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)));
                    if let Err(e) = advanced {
                        // Forwarding it again is harmless: same Nats-Msg-Id.
                        tracing::error!(error = %e, "cannot move the spool cursor; retrying");
                        if pause(&stop, &mut retry).await {
                            return;
                        }
                        continue;
                    }
                    metrics::counter!("nwd_gateway_spool_forwarded_total").increment(1);
                    tracing::info!(
                        msg_id = %record.msg_id,
                        duplicate = published.duplicate,
                        waited_ms = now_ms().saturating_sub(record.spooled_at_ms),
                        "spooled webhook forwarded"
                    );
                    retry = RETRY_MIN;
                }
                Err(failure) => {
                    tracing::debug!(?failure, "the hub is still not storing; retrying");
                    if pause(&stop, &mut retry).await {
                        return;
                    }
                }
            }
        }
    }

    fn connected(&self) -> bool {
        self.inner.js.client().connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<nwd_runtime::bus::Published, Failure> {
        let message = jetstream::message::PublishMessage::build()
            .message_id(msg_id)
            .payload(payload);
        let publish = async {
            let ack = self
                .inner
                .js
                .send_publish(subject.to_owned(), message)
                .await?;
            ack.await
        };
        match tokio::time::timeout(self.inner.publish_timeout, publish).await {
            Ok(Ok(ack)) => Ok(nwd_runtime::bus::Published {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(e)) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => Err(Failure::Permanent),
                PublishErrorKind::TimedOut => Err(Failure::Transient("timed out")),
                PublishErrorKind::StreamNotFound => Err(Failure::Transient("no responders")),
                PublishErrorKind::BrokenPipe => Err(Failure::Transient("connection lost")),
                PublishErrorKind::MaxAckPending => Err(Failure::Transient("too many pending")),
                // Anything else the hub says (storage full, …) is also the
                // hub's to fix; the webhook waits on disk meanwhile.
                _ => Err(Failure::Transient("refused by the hub")),
            },
            Err(_) => Err(Failure::Transient("timed out")),
        }
    }

    fn refused(&self, refusal: Refusal) -> Refusal {
        metrics::counter!("nwd_gateway_spool_refused_total", "reason" => refusal.reason())
            .increment(1);
        refusal
    }

    fn record_gauges(&self) {
        let spool = &self.inner.spool;
        metrics::gauge!("nwd_gateway_spool_depth").set(spool.depth() as f64);
        metrics::gauge!("nwd_gateway_spool_bytes").set(spool.bytes() as f64);
        metrics::gauge!("nwd_gateway_spool_max_bytes").set(spool.max_bytes as f64);
        metrics::gauge!("nwd_gateway_spool_oldest_age_seconds")
            .set(spool.oldest_age().as_secs_f64());
    }
}

/// Why a publish did not end in an ack.
#[derive(Debug)]
enum Failure {
    /// The hub may take it later (timeout, no responders, connection lost, …).
    Transient(&'static str),
    /// It can never take it (larger than the server's `max_payload`).
    Permanent,
}

/// Sleeps for `retry` (doubling it up to 2 s) unless `stop` fires first;
/// true when stopped.
async fn pause(stop: &CancellationToken, retry: &mut Duration) -> bool {
    let wait = *retry;
    *retry = (*retry * 2).min(RETRY_MAX);
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> nwd_testkit::TempDir {
        nwd_testkit::temp_dir("nwd-spool-")
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_round_trip_and_a_flipped_bit_is_caught() {
        let framed = encode("nwd.v1.inbound.sms", "SM1", b"{\"a\":1}", 42);
        let rec = decode(&framed).unwrap();
        assert_eq!(rec.subject, "nwd.v1.inbound.sms");
        assert_eq!(rec.msg_id, "SM1");
        assert_eq!(&rec.payload[..], b"{\"a\":1}");
        assert_eq!(rec.spooled_at_ms, 42);
        let mut bad = framed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode(&bad).is_none());
        assert!(decode(&framed[..framed.len() - 1]).is_none());
    }

    #[test]
    fn appends_survive_reopen_in_order_and_forwarded_ones_do_not_return() {
        let d = dir();
        let spool = Spool::open(d.path(), 1 << 20).unwrap();
        for i in 0..5 {
            spool.append("s", &format!("id{i}"), b"p").unwrap();
        }
        let (pos, rec) = spool.head().unwrap().unwrap();
        assert_eq!(rec.msg_id, "id0");
        spool.advance(&pos).unwrap();
        drop(spool);
        let spool = Spool::open(d.path(), 1 << 20).unwrap();
        assert_eq!(spool.depth(), 4);
        let mut seen = Vec::new();
        while let Some((pos, rec)) = spool.head().unwrap() {
            seen.push(rec.msg_id);
            spool.advance(&pos).unwrap();
        }
        assert_eq!(seen, ["id1", "id2", "id3", "id4"]);
        assert_eq!(spool.bytes(), 0);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "all files gone");
    }

    #[test]
    fn segments_rotate_and_consumed_ones_are_deleted() {
        let d = dir();
        let spool = Spool::open(d.path(), 16 * 1024).unwrap();
        let payload = vec![b'x'; 1000];
        for i in 0..10 {
            spool.append("s", &format!("id{i}"), &payload).unwrap();
        }
        let segments = |p: &Path| {
            fs::read_dir(p)
                .unwrap()
                .filter(|e| {
                    e.as_ref().unwrap().path().extension().unwrap_or_default() == SEGMENT_EXT
                })
                .count()
        };
        assert!(segments(d.path()) >= 3, "4 KiB segments rotate");
        for _ in 0..5 {
            let (pos, _) = spool.head().unwrap().unwrap();
            spool.advance(&pos).unwrap();
        }
        assert!(segments(d.path()) < 3);
        drop(spool);
        let spool = Spool::open(d.path(), 16 * 1024).unwrap();
        assert_eq!(spool.head().unwrap().unwrap().1.msg_id, "id5");
    }

    #[test]
    fn a_full_spool_refuses_until_something_is_forwarded() {
        let d = dir();
        let spool = Spool::open(d.path(), 4096).unwrap();
        let payload = vec![b'x'; 1000];
        let mut accepted = 0;
        loop {
            match spool.append("s", "id", &payload) {
                Ok(()) => accepted += 1,
                Err(SpoolError::Full(4096)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted, 4);
        assert!(spool.is_full());
        let (pos, _) = spool.head().unwrap().unwrap();
        spool.advance(&pos).unwrap();
        assert!(!spool.is_full());
    }
}
