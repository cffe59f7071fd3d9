//! A memory and time budget for code east runs but did not write: a model's chat template.
//!
//! minijinja's fuel bounds the instructions a template executes, not what they allocate: a
//! template that doubles a string 40 times runs 200 instructions and asks for a terabyte (the
//! process aborts on the failed allocation). No hook of the engine sees `~` or `+` build a
//! string, so the budget is kept where every allocation passes: east's global allocator
//! ([`Budgeted`], the system allocator plus a per-thread account). [`run`] executes a closure
//! on a worker thread (one per calling thread, reused) whose account has a limit. An allocation that would pass it never
//! returns: an allocator cannot fail without aborting the process, so the thread is parked for
//! good (holding at most the budget) and the caller, which watches a flag, gets
//! [`Exceeded::Memory`]. The caller also stops waiting after the time budget
//! ([`Exceeded::Time`]); that thread runs on until its fuel is spent. Either way the thread is
//! abandoned, so a template that exceeded its budget is refused from then on.
//!
//! Threads without a limit (every other thread) pay one thread-local read per allocation.
//!
//! A thread parked while it holds a process-wide lock would stall whoever takes that lock
//! next: a panicking thread is never parked, and the caller initialises the lazy statics a
//! rendering uses before the first budgeted one (`ChatTemplate::new`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The system allocator, with a byte budget for threads started by [`run`].
pub struct Budgeted;

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

/// A thread's account: `limit` is `usize::MAX` for threads without a budget.
struct Account {
    limit: Cell<usize>,
    held: Cell<usize>,
    /// Set when the limit is hit (points into an `Arc` the thread itself keeps alive).
    over: Cell<*const AtomicBool>,
}

thread_local! {
    // const-initialised and without a destructor: reading it never allocates
    static ACCOUNT: Account = const {
        Account {
            limit: Cell::new(usize::MAX),
            held: Cell::new(0),
            over: Cell::new(std::ptr::null()),
        }
    };
}

fn charge(bytes: usize) {
    ACCOUNT.with(|a| {
        if a.limit.get() == usize::MAX {
            return;
        }
        let held = a.held.get().saturating_add(bytes);
        // A panicking thread (the hook capturing a backtrace) holds process-wide locks:
        // parked, it would stall every later panic. Its unwinding ends the run anyway.
        if held > a.limit.get() && !std::thread::panicking() {
            // SAFETY: `over` was set by `run` from an Arc that this thread's closure owns and
            // never drops while parked here.
            unsafe { (*a.over.get()).store(true, Ordering::SeqCst) };
            loop {
                // nanosleep: allocates nothing
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        a.held.set(held);
    });
}

fn credit(bytes: usize) {
    ACCOUNT.with(|a| {
        if a.limit.get() != usize::MAX {
            a.held.set(a.held.get().saturating_sub(bytes));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; `charge` may block the calling thread
// forever but never unwinds or returns a bad pointer.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        credit(layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            credit(layout.size() - new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// Sets the calling thread's limit while alive.
struct LimitGuard;

impl LimitGuard {
    fn set(bytes: usize, over: &Arc<AtomicBool>) -> LimitGuard {
        ACCOUNT.with(|a| {
            a.over.set(Arc::as_ptr(over));
            a.held.set(0);
            a.limit.set(bytes);
        });
        LimitGuard
    }
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        ACCOUNT.with(|a| {
            a.limit.set(usize::MAX);
            a.over.set(std::ptr::null());
        });
    }
}

/// How much a [`run`] may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes its heap allocations may hold at once.
    pub memory: usize,
    /// Wall-clock time the caller waits.
    pub time: Duration,
}

/// Why a [`run`] gave no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Exceeded {
    #[error("it needed more than {} MiB of memory", .0 >> 20)]
    Memory(usize),
    #[error("it ran longer than {:.0} s", .0.as_secs_f64())]
    Time(Duration),
    #[error("it panicked: {0}")]
    Panicked(String),
    #[error("no thread to run it on: {0}")]
    Spawn(String),
}

/// Stack of a budgeted thread: deep template recursion (minijinja allows 500 levels) must not
/// overflow it (an overflow aborts the process). Reserved, not committed.
const STACK: usize = 64 << 20;

type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;
type Outcome = Result<Box<dyn Any + Send>, String>;

/// A thread that runs jobs within a budget, one at a time, for one calling thread (starting
/// a thread per rendering cost ~100 µs against ~1 µs for rendering a short conversation).
struct Worker {
    jobs: mpsc::Sender<(usize, Job)>,
    results: mpsc::Receiver<Outcome>,
    /// Set by the allocator when the worker is parked for good.
    over: Arc<AtomicBool>,
}

impl Worker {
    fn start() -> Result<Worker, Exceeded> {
        let over = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&over);
        let (jobs, inbox) = mpsc::channel::<(usize, Job)>();
        let (outbox, results) = mpsc::channel::<Outcome>();
        std::thread::Builder::new()
            .name("east-budgeted".into())
            .stack_size(STACK)
            .spawn(move || {
                for (memory, job) in inbox {
                    let out = {
                        let _limit = LimitGuard::set(memory, &flag);
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                    };
                    if outbox.send(out.map_err(|p| panic_text(&*p))).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Exceeded::Spawn(e.to_string()))?;
        Ok(Worker {
            jobs,
            results,
            over,
        })
    }

    /// Runs `job`, waiting at most `limits.time`.
    fn run(&self, limits: Limits, job: Job) -> Result<Box<dyn Any + Send>, Exceeded> {
        let ended = || Exceeded::Panicked("the budgeted thread ended".into());
        self.jobs.send((limits.memory, job)).map_err(|_| ended())?;
        let deadline = Instant::now() + limits.time;
        loop {
            match self.results.recv_timeout(Duration::from_millis(5)) {
                Ok(out) => return out.map_err(Exceeded::Panicked),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(ended()),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.over.load(Ordering::SeqCst) {
                        return Err(Exceeded::Memory(limits.memory));
                    }
                    if Instant::now() >= deadline {
                        return Err(Exceeded::Time(limits.time));
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The calling thread's worker; dropped (its thread ends) with the calling thread.
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

/// Runs `f` on the calling thread's worker within `limits` (see the module docs). A worker
/// that gave no result (over the budget, or its job panicked) is abandoned; the next call
/// starts another.
pub fn run<T: Send + 'static>(
    limits: Limits,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Exceeded> {
    WORKER.with(|slot| {
        let mut slot = slot.borrow_mut();
        let worker = match slot.take() {
            Some(w) => w,
            None => Worker::start()?,
        };
        let job: Job = Box::new(move || Box::new(f()) as Box<dyn Any + Send>);
        let out = worker.run(limits, job)?;
        // kept only after a result: after anything else it is parked, busy or gone
        *slot = Some(worker);
        Ok(*out.downcast::<T>().expect("the job's own type"))
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        memory: 16 << 20,
        time: Duration::from_secs(5),
    };

    #[test]
    fn work_within_the_budget_returns_its_result() {
        // 100 × 1 MiB allocated and freed: what is held, not what was ever allocated, counts
        let r = run(LIMITS, || {
            (0..100)
                .map(|i| {
                    vec![i as u8; 1 << 20]
                        .iter()
                        .map(|&b| b as usize)
                        .sum::<usize>()
                })
                .sum::<usize>()
        });
        assert_eq!(r, Ok((0..100).map(|i| i * (1 << 20)).sum()));
    }

    #[test]
    fn doubling_a_string_stops_at_the_budget() {
        let started = Instant::now();
        let r = run(LIMITS, || {
            let mut s = String::from("x");
            for _ in 0..40 {
                s = format!("{s}{s}");
            }
            s.len()
        });
        assert_eq!(r, Err(Exceeded::Memory(16 << 20)));
        assert!(started.elapsed() < Duration::from_secs(2));
        // the caller's own allocations are not limited
        assert_eq!(vec![0u8; 64 << 20].len(), 64 << 20);
    }

    /// One worker per calling thread serves every run; one parked by the allocator is
    /// replaced by a new one.
    #[test]
    fn the_worker_is_reused_until_it_is_parked() {
        let id = || run(LIMITS, || std::thread::current().id()).unwrap();
        let first = id();
        assert_ne!(first, std::thread::current().id());
        assert_eq!(id(), first);
        let r = run(LIMITS, || vec![0u8; 32 << 20].len());
        assert_eq!(r, Err(Exceeded::Memory(16 << 20)));
        let next = id();
        assert_ne!(next, first);
        assert_eq!(id(), next);
    }

    #[test]
    fn a_run_past_its_time_is_left_behind() {
        let limits = Limits {
            memory: 1 << 20,
            time: Duration::from_millis(100),
        };
        let r = run(limits, || std::thread::sleep(Duration::from_secs(2)));
        assert_eq!(r, Err(Exceeded::Time(Duration::from_millis(100))));
        // printing the panic (with a backtrace under RUST_BACKTRACE) is not held to the budget
        let r = run(LIMITS, || -> u8 { panic!("template engine bug") });
        assert_eq!(r, Err(Exceeded::Panicked("template engine bug".into())));
    }
}
