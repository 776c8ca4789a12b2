//! Live migration of a running VM over any byte stream (a Unix socket, TCP), by pre-copy.
//!
//! # How
//! The source ([`Vm::send_migration`]) sends guest RAM while the guest runs (pages the host
//! never populated, and all-zero pages, are skipped in this first pass: the destination's
//! RAM starts zeroed), then, in rounds, the pages the guest (or a device) wrote since the
//! last round, from the dirty log (KVM's log of guest writes merged with the VMM's own,
//! [`Vm::dirty_log`]). When what is left to send would take no longer than the downtime
//! budget at the speed the link has shown ([`MigrationOptions::downtime`], default 100 ms)
//! and has stopped halving from round to round (or is down to a few pages), or after
//! [`MigrationOptions::max_rounds`], it pauses the VM, sends the last dirty pages and the
//! machine state (vCPUs, irqchip, PIT, clock, devices: [`crate::snapshot::MachineState`]),
//! and waits. The destination ([`accept`], [`Incoming::complete`]) builds the VM, starts it
//! and confirms; only then does the source end ([`crate::ExitReason::Migrated`]). A failure
//! at any point before that (the link breaks, the destination refuses or cannot build the
//! machine) leaves the source running as it was and returns why ([`Error`]).
//!
//! # Wire protocol (version 1)
//! Every message is a frame: a 16-byte header, then `len` bytes of payload.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `HVMG` |
//! | 4 | kind (below) |
//! | 5..8 | reserved, zero |
//! | 8..16 | `len`, u64 little-endian (at most 4 MiB + 8 for memory, 64 MiB otherwise) |
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 1 `Hello` | source -> destination | JSON `{"protocol": 1, "config": SnapshotConfig, "running": bool}` |
//! | 2 `Ready` | destination -> source | empty: the destination has the RAM and can build the machine |
//! | 3 `Memory` | source -> destination | guest-physical address (u64 LE), then a page-aligned run of RAM (at most 4 MiB) |
//! | 4 `State` | source -> destination | JSON `MachineState` (version 1), after the last memory |
//! | 5 `Complete` | destination -> source | empty: the VM runs on the destination |
//! | 6 `Error` | either | UTF-8 reason; the sender gives up |
//!
//! A conversation: `Hello`, `Ready`, `Memory`*, `State`, `Complete` (or `Error` from either
//! side at any point). Every frame is checked before it is acted on: the magic, the kind,
//! the length limit, memory runs inside guest RAM and page-aligned, JSON documents typed and
//! versioned.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixStream;
//! use hv_core::{migration, VmBuilder};
//! # let vm: hv_core::Vm = todo!();
//! // Destination (another thread or process):
//! let (mut dst, mut src) = UnixStream::pair()?;
//! let t = std::thread::spawn(move || migration::receive(&mut dst, VmBuilder::new()));
//! // Source:
//! let stats = vm.send_migration(&mut src, &migration::MigrationOptions::default())?;
//! let destination_vm = t.join().unwrap()?;
//! println!("{} rounds, downtime {:?}", stats.rounds, stats.downtime);
//! # Ok(()) }
//! ```

pub mod protocol;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hv_mem::{DirtyBitmap, GuestRam};
use vm_memory::{Bytes, GuestAddress};

use crate::lifecycle::ExitReason;
use crate::snapshot::restore::{check, check_host, memory_config};
use crate::snapshot::{MachineState, MemorySource, SnapshotConfig};
use crate::vm::{Vm, VmBuilder, VmState};
use protocol::{
    read_frame, read_frame_into, write_frame, write_json, Hello, Kind, MAX_RUN, PROTOCOL_VERSION,
};

/// Errors of a migration, on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the stream failed.
    #[error("{during}: {source}")]
    Io {
        /// What was being done.
        during: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A frame did not start with the protocol's magic.
    #[error("not an hv migration stream (magic {0:#010x})")]
    BadMagic(u32),
    /// A frame of a kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownFrame(u8),
    /// A frame longer than its kind allows.
    #[error("{kind:?} frame of {len} bytes is over the limit")]
    FrameTooLarge {
        /// The frame kind.
        kind: protocol::Kind,
        /// Its announced length.
        len: u64,
    },
    /// A frame that does not belong at this point of the conversation.
    #[error("expected {expected}, got a {got:?} frame")]
    UnexpectedFrame {
        /// What the protocol expects now.
        expected: &'static str,
        /// What arrived.
        got: protocol::Kind,
    },
    /// The peer speaks another protocol version.
    #[error("peer speaks migration protocol {found}, this hv speaks {supported}")]
    Version {
        /// The peer's version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// A memory run outside guest RAM or not page-aligned.
    #[error("memory run at {gpa:#x} ({len} bytes) is not page-aligned guest RAM")]
    BadMemoryRun {
        /// Its guest-physical address.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// A JSON document could not be encoded.
    #[error("cannot encode a document: {0}")]
    Encode(String),
    /// A JSON document from the peer is malformed.
    #[error("malformed {what} from the peer: {reason}")]
    Decode {
        /// Which document.
        what: &'static str,
        /// The parse error.
        reason: String,
    },
    /// The peer gave up and said why.
    #[error("the peer gave up: {0}")]
    Peer(String),
    /// The VM was built without dirty-page tracking, so pages written during the copy could
    /// not be found.
    #[error("live migration needs a VM built with dirty-page tracking")]
    NoDirtyTracking,
    /// The copy outlasted [`MigrationOptions::timeout`] and the strategy was to cancel.
    #[error(
        "migration timed out after {elapsed:?} with {left} bytes still dirty; the VM goes on here"
    )]
    Timeout {
        /// How long the copy had run.
        elapsed: Duration,
        /// RAM bytes still to send.
        left: u64,
    },
    /// The VM is not in a state that can be migrated.
    #[error("cannot migrate a VM that is {0}")]
    State(VmState),
    /// The VM (source) or the machine (destination) failed.
    #[error(transparent)]
    Vm(#[from] crate::vm::Error),
    /// The machine state or config is not one this host can take.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
}

/// Result type of migrations.
pub type Result<T> = std::result::Result<T, Error>;

/// How a migration runs.
#[derive(Clone, Debug)]
pub struct MigrationOptions {
    /// How long the VM may stay paused for the last copy, at the link speed measured during
    /// the copy (default 100 ms).
    pub downtime: Duration,
    /// Copy rounds after the first full one before pausing anyway (default 30).
    pub max_rounds: u32,
    /// How long the copy while running may take before [`on_timeout`](Self::on_timeout)
    /// decides (default an hour, as Cloud Hypervisor's `timeout_s`).
    pub timeout: Duration,
    /// What happens when the copy outlasts [`timeout`](Self::timeout).
    pub on_timeout: TimeoutStrategy,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            downtime: Duration::from_millis(100),
            max_rounds: 30,
            timeout: Duration::from_secs(3600),
            on_timeout: TimeoutStrategy::Cancel,
        }
    }
}

/// What a migration does when its copy outlasts [`MigrationOptions::timeout`] (Cloud
/// Hypervisor's `timeout_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeoutStrategy {
    /// Give up: the VM goes on running on the source ([`Error::Timeout`]).
    #[default]
    Cancel,
    /// Pause and finish anyway, whatever the downtime.
    Ignore,
}

/// What a migration did (source side).
#[derive(Clone, Debug, Default)]
pub struct MigrationStats {
    /// Rounds of dirty pages sent while running (after the full copy).
    pub rounds: u32,
    /// RAM bytes sent in all.
    pub memory_bytes: u64,
    /// Bytes sent while paused (the last dirty pages).
    pub final_bytes: u64,
    /// Link speed measured during the copy, bytes per second.
    pub bandwidth: f64,
    /// From the start to the destination's confirmation.
    pub total: Duration,
    /// From pausing the source to the destination's confirmation that it runs.
    pub downtime: Duration,
}

fn expect(kind: Kind, expected: Kind, what: &'static str, payload: &[u8]) -> Result<()> {
    if kind == Kind::Error {
        return Err(Error::Peer(String::from_utf8_lossy(payload).into_owned()));
    }
    if kind != expected {
        return Err(Error::UnexpectedFrame { expected: what, got: kind });
    }
    Ok(())
}

/// What may be left for the pause without trying another round: 64 pages, a fraction of a
/// millisecond on any link worth migrating over.
const CONVERGED_BYTES: u64 = 64 * hv_mem::PAGE_SIZE;

/// Writes one memory frame: `data` at `gpa`.
fn send_run(w: &mut impl Write, gpa: u64, data: &[u8]) -> Result<()> {
    let io = |source| Error::Io { during: "sending memory", source };
    let mut head = [0u8; protocol::HEADER_LEN + 8];
    head[..protocol::HEADER_LEN]
        .copy_from_slice(&protocol::header(Kind::Memory, 8 + data.len() as u64));
    head[protocol::HEADER_LEN..].copy_from_slice(&gpa.to_le_bytes());
    w.write_all(&head).map_err(io)?;
    w.write_all(data).map_err(io)
}

/// The first full pass: every page of RAM that is not all zeroes (the destination's fresh RAM
/// is zeroed already; [`GuestRam::for_each_nonzero_run`] reads only populated pages). Returns
/// the bytes of RAM sent.
fn send_all(ram: &GuestRam, w: &mut impl Write) -> Result<u64> {
    let mut sent = 0u64;
    ram.for_each_nonzero_run(MAX_RUN, bad_run, |gpa, data| {
        sent += data.len() as u64;
        send_run(w, gpa, data)
    })?;
    w.flush().map_err(|source| Error::Io { during: "sending memory", source })?;
    Ok(sent)
}

/// Sends every page set in `bitmap`. Returns the bytes of RAM sent.
fn send_pages(ram: &GuestRam, w: &mut impl Write, bitmap: &DirtyBitmap) -> Result<u64> {
    let mut sent = 0u64;
    ram.for_each_chunk(bitmap.runs(), MAX_RUN, bad_run, |gpa, chunk| {
        sent += chunk.len() as u64;
        send_run(w, gpa, chunk)
    })?;
    w.flush().map_err(|source| Error::Io { during: "sending memory", source })?;
    Ok(sent)
}

fn bad_run(gpa: u64, len: usize) -> Error {
    Error::BadMemoryRun { gpa, len }
}

impl Vm {
    /// Migrates this VM to the destination at the other end of `stream` (see
    /// [`crate::migration`]). On success the VM has ended ([`ExitReason::Migrated`]) and runs
    /// on the destination; on failure it goes on here as before, and the error says why.
    /// The VM must be running or paused and built with [`VmBuilder::dirty_tracking`].
    pub fn send_migration<S: Read + Write>(
        &self,
        stream: &mut S,
        opts: &MigrationOptions,
    ) -> Result<MigrationStats> {
        let start = Instant::now();
        let state = self.state();
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(Error::State(state));
        }
        if !self.dirty_tracking {
            return Err(Error::NoDirtyTracking);
        }
        let running = state == VmState::Running;
        let hello = Hello { protocol: PROTOCOL_VERSION, config: self.snapshot_config(), running };
        write_json(stream, Kind::Hello, &hello)?;
        let (kind, payload) = read_frame(stream)?;
        expect(kind, Kind::Ready, "Ready", &payload)?;

        // Everything once, then what changed, while the guest runs.
        let mut stats = MigrationStats::default();
        self.dirty_log()?;
        let t = Instant::now();
        stats.memory_bytes = send_all(self.ram(), stream)?;
        let mut bandwidth = stats.memory_bytes as f64 / t.elapsed().as_secs_f64().max(1e-6);
        log::debug!(
            "migration out: full pass sent {} KiB in {:?} (setup {:?})",
            stats.memory_bytes >> 10,
            t.elapsed(),
            t - start
        );
        let mut pending = self.dirty_log()?;
        let mut last_round = u64::MAX;
        while running && stats.rounds < opts.max_rounds {
            let left = pending.dirty_bytes();
            let estimate = left as f64 / bandwidth;
            // Within the budget, one more round still pays while what is left shrinks
            // quickly (the guest dirties less during a short round than the round sends):
            // the pause then only has a few pages to send.
            let converging = left > CONVERGED_BYTES && left < last_round / 2;
            if estimate <= opts.downtime.as_secs_f64() && !converging {
                break;
            }
            if start.elapsed() >= opts.timeout {
                if opts.on_timeout == TimeoutStrategy::Ignore {
                    log::warn!("migration timed out after {:?}: finishing anyway", start.elapsed());
                    break;
                }
                let e = Error::Timeout { elapsed: start.elapsed(), left };
                let _ = write_frame(stream, Kind::Error, e.to_string().as_bytes());
                return Err(e);
            }
            last_round = left;
            let t = Instant::now();
            let n = send_pages(self.ram(), stream, &pending)?;
            bandwidth = n as f64 / t.elapsed().as_secs_f64().max(1e-6);
            stats.memory_bytes += n;
            stats.rounds += 1;
            log::debug!(
                "migration out: round {} sent {} KiB in {:?}",
                stats.rounds,
                n >> 10,
                t.elapsed()
            );
            pending = self.dirty_log()?;
        }
        stats.bandwidth = bandwidth;

        // Stop, send the rest and the state, wait for the destination.
        let paused_at = Instant::now();
        if running {
            self.pause()?;
        }
        log::debug!("migration out: paused in {:?}", paused_at.elapsed());
        let outcome = self.finish_migration(stream, pending, &mut stats);
        match outcome {
            Ok(()) => {
                stats.downtime = paused_at.elapsed();
                stats.total = start.elapsed();
                self.ctx.control.finish(ExitReason::Migrated);
                Ok(stats)
            }
            Err(failure) => {
                let (e, saved) = *failure;
                if let Some(s) = saved {
                    self.resume_devices(&s);
                }
                if running {
                    let _ = self.resume();
                }
                // Tell the destination, if it still listens, so it drops what it built.
                let _ = write_frame(stream, Kind::Error, e.to_string().as_bytes());
                Err(e)
            }
        }
    }

    /// The paused part: last pages, state, confirmation. On error, returns the state saved
    /// (its devices quiesced) so the caller can start them again.
    fn finish_migration<S: Read + Write>(
        &self,
        stream: &mut S,
        mut pending: DirtyBitmap,
        stats: &mut MigrationStats,
    ) -> std::result::Result<(), Box<(Error, Option<MachineState>)>> {
        let fail = |e: Error| Box::new((e, None));
        let t = Instant::now();
        let last = self.dirty_log().map_err(|e| fail(e.into()))?;
        pending.merge(&last).map_err(|e| fail(Error::Encode(e.to_string())))?;
        let state = self.save_state().map_err(|e| fail(e.into()))?;
        let saved = t.elapsed();
        // Devices were quiesced by save_state: what they wrote until then is in the log.
        let devices = self.ram().take_vmm_dirty();
        let _ = pending.merge(&devices);
        let sent = send_pages(self.ram(), stream, &pending);
        let sent = match sent {
            Ok(n) => n,
            Err(e) => return Err(Box::new((e, Some(state)))),
        };
        stats.final_bytes = sent;
        stats.memory_bytes += sent;
        let pages_sent = t.elapsed();
        if let Err(e) = write_json(stream, Kind::State, &state) {
            return Err(Box::new((e, Some(state))));
        }
        let state_sent = t.elapsed();
        let confirmed = read_frame(stream);
        log::debug!(
            "migration out, paused: state saved at {saved:?}, last {} KiB of memory sent at \
             {pages_sent:?}, state at {state_sent:?}, confirmation after {:?}",
            sent >> 10,
            t.elapsed()
        );
        match confirmed {
            Ok((kind, payload)) => match expect(kind, Kind::Complete, "Complete", &payload) {
                Ok(()) => Ok(()),
                Err(e) => Err(Box::new((e, Some(state)))),
            },
            Err(e) => Err(Box::new((e, Some(state)))),
        }
    }
}

/// A migration the destination has accepted: the source's machine config is known, RAM and
/// state are still to come. The caller may build the virtio devices from
/// [`config`](Incoming::config) before [`complete`](Incoming::complete).
pub struct Incoming<'a, S: Read + Write> {
    stream: &'a mut S,
    hello: Hello,
}

/// Reads the source's opening (protocol version, machine config).
pub fn accept<S: Read + Write>(stream: &mut S) -> Result<Incoming<'_, S>> {
    let (kind, payload) = read_frame(stream)?;
    expect(kind, Kind::Hello, "Hello", &payload)?;
    let v: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| Error::Decode { what: "Hello", reason: e.to_string() })?;
    let found = v.get("protocol").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if found != u64::from(PROTOCOL_VERSION) {
        let e = Error::Version { found: found as u32, supported: PROTOCOL_VERSION };
        let _ = write_frame(stream, Kind::Error, e.to_string().as_bytes());
        return Err(e);
    }
    let hello: Hello = serde_json::from_value(v)
        .map_err(|e| Error::Decode { what: "Hello", reason: e.to_string() })?;
    Ok(Incoming { stream, hello })
}

/// Receives a migration on `stream` and returns the VM, running (or paused, if it was
/// paused on the source). `builder` supplies the serial output and the virtio devices.
pub fn receive<S: Read + Write>(stream: &mut S, builder: VmBuilder) -> Result<Vm> {
    accept(stream)?.complete(builder)
}

impl<S: Read + Write> Incoming<'_, S> {
    /// The machine the source runs.
    pub fn config(&self) -> &SnapshotConfig {
        &self.hello.config
    }

    /// Receives RAM and state, builds the VM, starts it and confirms to the source. Any
    /// error is also sent to the source, which then goes on running.
    pub fn complete(self, builder: VmBuilder) -> Result<Vm> {
        let Incoming { stream, hello } = self;
        let result = receive_rest(stream, &hello, builder);
        match result {
            Ok(vm) => {
                write_frame(stream, Kind::Complete, &[])?;
                Ok(vm)
            }
            Err(e) => {
                let _ = write_frame(stream, Kind::Error, e.to_string().as_bytes());
                Err(e)
            }
        }
    }
}

fn receive_rest<S: Read + Write>(stream: &mut S, hello: &Hello, builder: VmBuilder) -> Result<Vm> {
    let config = &hello.config;
    check_host(config)?;
    let ram = GuestRam::new(&memory_config(config)).map_err(crate::vm::Error::from)?;
    // The machine is built now, while memory streams in, so the source's downtime only pays
    // for applying the state and starting the vCPUs.
    let vm = builder.rebuild(config, None, ram, MemorySource::Allocated)?;
    write_frame(stream, Kind::Ready, &[])?;
    let mem = vm.ram().memory();
    let mut payload = Vec::with_capacity(MAX_RUN + 8);
    let state: MachineState = loop {
        let kind = read_frame_into(stream, &mut payload)?;
        match kind {
            Kind::Memory => {
                let (addr, data) = payload
                    .split_at_checked(8)
                    .ok_or(Error::BadMemoryRun { gpa: 0, len: payload.len() })?;
                let mut a = [0u8; 8];
                a.copy_from_slice(addr);
                let gpa = u64::from_le_bytes(a);
                let aligned = gpa.is_multiple_of(hv_mem::PAGE_SIZE)
                    && (data.len() as u64).is_multiple_of(hv_mem::PAGE_SIZE);
                if !aligned || mem.write_slice(data, GuestAddress(gpa)).is_err() {
                    return Err(Error::BadMemoryRun { gpa, len: data.len() });
                }
            }
            Kind::State => {
                let path = std::path::Path::new("migration stream");
                break crate::snapshot::parse_versioned(path, &payload)?;
            }
            other => {
                payload.truncate(1024);
                expect(other, Kind::State, "Memory or State", &payload)?;
            }
        }
    };
    let t = Instant::now();
    check(config, &state)?;
    vm.apply_state(&state)?;
    let applied = t.elapsed();
    if hello.running {
        vm.start()?;
    } else {
        vm.start_paused()?;
    }
    log::debug!(
        "migration in: state applied in {applied:?}, started in {:?}",
        t.elapsed() - applied
    );
    Ok(vm)
}
