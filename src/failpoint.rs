//! Fail points: the named places where a fault test (tests/faults.rs) freezes, kills or
//! panics a replica deterministically, between a fenced statement and its commit, say.
//!
//! Compiled in only with the `failpoints` cargo feature, which the test command enables; in
//! any other build [`hit`] is an empty inline function and nothing reads `FAILPOINTS`.
//! Armed by the `FAILPOINTS` environment variable in the `fail` crate's syntax
//! (`name=[count*]action;…`), read once at start ([`arm`]). Besides the crate's own actions
//! (`panic`, `sleep(ms)`, …), `return(<what>)` names what the process does:
//!
//! - `return(stop)`: it stops itself with SIGSTOP, as a VM pause or a debugger would, and
//!   goes on from this very place after SIGCONT;
//! - `return(abort)`: it dies at once, as with SIGKILL.
//!
//! e.g. `FAILPOINTS='fence.before_commit=1*return(stop)'` freezes the leader inside its first
//! fenced transaction, its row locks held, before it commits.

/// A place where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A fenced transaction (leader's term asserted, its writes made), before its commit.
    FenceBeforeCommit,
    /// A check under a probe lease, probed, before its one fenced write.
    CheckBeforeWrite,
    /// A check under a probe lease, inside the probe (a panic here is a panic in a check).
    CheckProbe,
}

impl Point {
    /// The name `FAILPOINTS` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Point::FenceBeforeCommit => "fence.before_commit",
            Point::CheckBeforeWrite => "check.before_write",
            Point::CheckProbe => "check.probe",
        }
    }
}

/// Arm the fail points `FAILPOINTS` names, for the life of the process.
pub fn arm() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Pass `point`: whatever it is armed with happens here.
#[cfg(feature = "failpoints")]
pub fn hit(point: Point) {
    let Some(what) = fail::eval(point.name(), |arg| arg) else {
        return;
    };
    match what.as_deref() {
        Some("stop") => {
            tracing::warn!(
                point = point.name(),
                "fail point: stopping this process (SIGSTOP)"
            );
            if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP) {
                tracing::error!(point = point.name(), error = %e, "fail point: cannot stop");
            }
            tracing::warn!(point = point.name(), "fail point: continued (SIGCONT)");
        }
        Some("abort") => {
            tracing::warn!(point = point.name(), "fail point: aborting this process");
            std::process::abort();
        }
        other => {
            tracing::error!(point = point.name(), action = ?other, "fail point: unknown return action");
        }
    }
}

/// Pass `point` (a build without the `failpoints` feature: nothing happens).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: Point) {}
