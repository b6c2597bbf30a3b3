//! A low-priority thread that keeps one CPU awake for a short while after each request the
//! node receives (`idle_spin_us`).
//!
//! On a machine whose idle CPUs halt (as in many virtual machines), waking a sleeping
//! thread on an idle CPU is a trip through the hypervisor, and a replicated write wakes
//! threads several times on its way (the leader for the request, each follower for its
//! AppendEntries, their log flushers, the leader again for the answers). A CPU that is
//! running something does not need that trip. So after each request (a gRPC call, or one
//! message of a leader's AppendEntries stream) the node lets a thread of its own spin for
//! `idle_spin_us`, counted from the latest request. The thread runs at Linux's `SCHED_IDLE`
//! policy (where that is not to be had, it does not spin): any other thread that wants its
//! CPU takes it at once, so it spends only time the CPU would have spent idle. The cost is
//! that time: CPU time and power while requests arrive, none once they stop. Linux's
//! `haltpoll` idle driver for virtual machines does the like inside the guest kernel,
//! polling for up to `guest_halt_poll_ns` before it halts; the test machine has that at 0,
//! and it is a setting of the whole machine, not of a node.
//!
//! Noting a request costs one atomic increment and one atomic load on the request's path;
//! a futex wake-up is added only when the spinner had gone to sleep. The time spent
//! spinning is counted (`seam_idle_spin_microseconds_total`), so its cost can be read off
//! `/metrics`.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::thread::Thread;
use std::time::Duration;
use std::time::Instant;

use prometheus::IntCounter;

/// How often a long spin adds to the spin counter (it also adds when it stops).
const COUNT_EVERY: Duration = Duration::from_millis(10);

/// Where requests are noted: a handle to the node's spinner, or nothing when it has none.
#[derive(Clone, Default)]
pub struct Activity {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    /// How long the spinner keeps going after the latest request.
    window: Duration,
    /// Requests noted so far; the spinner restarts its window when this moves.
    notes: AtomicU64,
    /// Whether the spinner is spinning (else it sleeps, or is about to).
    spinning: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
    /// Microseconds spent spinning so far.
    spun_us: IntCounter,
    /// The spinner's thread id, once its priority is lowered (for tests).
    #[cfg(all(test, target_os = "linux"))]
    tid: OnceLock<libc::pid_t>,
}

impl Activity {
    /// Notes a request: the spinner runs for its window from now.
    pub fn note(&self) {
        let Some(shared) = &self.shared else { return };
        shared.notes.fetch_add(1, Ordering::SeqCst);
        if !shared.spinning.load(Ordering::SeqCst) {
            if let Some(thread) = shared.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// The spinner thread; dropping it stops the thread and waits for it.
pub struct IdleSpinner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl IdleSpinner {
    /// Starts a spinner that keeps going for `window` after each noted request, adding the
    /// microseconds it spins to `spun_us`.
    pub fn start(window: Duration, spun_us: IntCounter) -> std::io::Result<(IdleSpinner, Activity)> {
        let shared = Arc::new(Shared {
            window,
            notes: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
            spun_us,
            #[cfg(all(test, target_os = "linux"))]
            tid: OnceLock::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new().name("seam-idle-spin".into()).spawn(move || {
            // Spinning at normal priority would take CPU time other work wants: without
            // the idle policy the thread ends, and notes go nowhere.
            if !lower_priority() {
                return;
            }
            #[cfg(all(test, target_os = "linux"))]
            // SAFETY: gettid has no preconditions.
            let _ = for_thread.tid.set(unsafe { libc::gettid() });
            run(&for_thread)
        })?;
        let _ = shared.thread.set(thread.thread().clone());
        tracing::info!(
            window_us = window.as_micros() as u64,
            "spinning a low-priority thread after requests"
        );
        Ok((IdleSpinner { shared: shared.clone(), thread: Some(thread) }, Activity { shared: Some(shared) }))
    }
}

impl Drop for IdleSpinner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Moves the calling thread to `SCHED_IDLE`, where it runs only when nothing else wants
/// the CPU, and says whether it could. Lowering one's own policy needs no privilege.
fn lower_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc == 0 {
            return true;
        }
        tracing::warn!(error = %std::io::Error::last_os_error(), "idle spinner: cannot use SCHED_IDLE, not spinning");
        false
    }
    #[cfg(not(target_os = "linux"))]
    {
        tracing::warn!("idle spinner: no SCHED_IDLE on this system, not spinning");
        false
    }
}

fn run(shared: &Shared) {
    // Notes start at 0 when `Shared` is made: a request noted before this thread first
    // looks is spun for too.
    let mut seen = 0;
    loop {
        // Sleep until a request is noted. `note` wakes the thread when it finds it not
        // spinning; a wake-up that comes before `park` makes `park` return at once.
        while shared.notes.load(Ordering::SeqCst) == seen {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::park();
        }
        shared.spinning.store(true, Ordering::SeqCst);
        let mut counted = Instant::now();
        let mut until = counted + shared.window;
        // Spin without a `pause` hint: a hypervisor may take a loop of them for a virtual
        // CPU waiting on a lock and run something else, and 16 per turn measured no better
        // here (docs/benchmarks.md).
        loop {
            let notes = shared.notes.load(Ordering::Relaxed);
            let now = Instant::now();
            if shared.stop.load(Ordering::Relaxed) {
                count(shared, &mut counted, now);
                break;
            }
            if notes != seen {
                seen = notes;
                until = now + shared.window;
            } else if now >= until {
                count(shared, &mut counted, now);
                break;
            }
            if now.saturating_duration_since(counted) >= COUNT_EVERY {
                count(shared, &mut counted, now);
            }
        }
        // A request noted after the last look found `spinning` still true and did not wake
        // the thread; the loop's first check sees it and spins again.
        shared.spinning.store(false, Ordering::SeqCst);
    }
}

/// Adds the whole microseconds since `counted` to the spin counter and moves `counted` on
/// by as much (the fraction left over is counted next time).
fn count(shared: &Shared, counted: &mut Instant, now: Instant) {
    let us = u64::try_from(now.saturating_duration_since(*counted).as_micros()).unwrap_or(u64::MAX);
    shared.spun_us.inc_by(us);
    *counted += Duration::from_micros(us);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(20);

    fn spinner(window: Duration) -> (IdleSpinner, Activity, IntCounter) {
        let spun = IntCounter::new("spun_us", "test").expect("valid counter");
        let (spinner, activity) = IdleSpinner::start(window, spun.clone()).expect("thread starts");
        (spinner, activity, spun)
    }

    fn spinning(activity: &Activity) -> bool {
        activity.shared.as_ref().is_some_and(|s| s.spinning.load(Ordering::SeqCst))
    }

    /// Waits (the spinner may wait long for a CPU on a busy machine) until `done` holds.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_note_makes_the_spinner_spin_one_window_and_then_sleep() {
        let window = Duration::from_millis(50);
        let (_spinner, activity, spun) = spinner(window);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(spun.get(), 0, "spun before any request");
        activity.note();
        wait_until("spinning after a note", || spinning(&activity) || spun.get() > 0);
        wait_until("asleep again", || !spinning(&activity) && spun.get() > 0);
        // Its window is counted from when it started, so it spun at least that long (on a
        // busy machine it may also have waited for the CPU, counted too).
        assert!(spun.get() >= window.as_micros() as u64, "spun {} us", spun.get());
        let after = spun.get();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spun.get(), after, "spun again with no request");
    }

    #[test]
    fn a_note_while_spinning_keeps_it_spinning_a_window_past_that_note() {
        let window = Duration::from_millis(100);
        let (_spinner, activity, spun) = spinner(window);
        activity.note();
        wait_until("spinning after a note", || spinning(&activity));
        let first = Instant::now();
        std::thread::sleep(Duration::from_millis(60));
        activity.note();
        let second = first.elapsed();
        wait_until("asleep again", || !spinning(&activity) && spun.get() > 0);
        let least = (second + window).as_micros() as u64;
        assert!(spun.get() >= least, "spun {} us, less than {least} us", spun.get());
    }

    #[test]
    fn dropping_the_spinner_stops_it_mid_window() {
        let (spinner, activity, _spun) = spinner(Duration::from_secs(60));
        activity.note();
        wait_until("spinning after a note", || spinning(&activity));
        let start = Instant::now();
        drop(spinner);
        assert!(start.elapsed() < Duration::from_secs(30), "drop waited {:?}", start.elapsed());
        // Notes after the stop go nowhere and do not fail.
        activity.note();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_spinner_runs_at_idle_priority() {
        let (_spinner, activity, _spun) = spinner(Duration::from_millis(1));
        let shared = activity.shared.as_ref().expect("a spinner");
        wait_until("the spinner's thread id", || shared.tid.get().is_some());
        let tid = *shared.tid.get().expect("set");
        // SAFETY: a plain query of a live thread's scheduling policy.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        assert_eq!(policy, libc::SCHED_IDLE, "the spinner runs at policy {policy}");
    }
}
