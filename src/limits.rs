//! Resource limits: the caps a run keeps on live containers and sandboxes
//! (`limits:` in the benchmark file, `--max-containers`, `--max-sandboxes`),
//! the live resources of the run counted per task, and the two decisions
//! made from them: whether the scheduler may start another task, and
//! whether a proxy may let one more create through (`limits.hard`).
//!
//! A limit must hold before any task has created anything, so admission
//! cannot wait for the count to reach the cap: by then the tasks already
//! running may still create more. The scheduler therefore learns a task's
//! footprint, the most of a kind any task has had live at once, and starts
//! a task only when what is live, what the running tasks may still create
//! and one more footprint fit under the cap. Until the first task has ended
//! the footprint is unknown, and that task runs alone. A task that creates
//! more than the cap by itself can still pass it: only `limits.hard`, which
//! refuses the create at the proxy, makes the cap a wall.
//!
//! Containers are counted from the proxies' creates and the engine's create
//! and destroy events (the creation watcher), so what a harness removes
//! itself stops counting at once. Sandboxes are counted from the Daytona
//! proxy's creates until their task's teardown has removed them, since a
//! sandbox being destroyed still counts against the provider's quota. What a
//! teardown could not remove goes on counting until it is seen destroyed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use crate::resource::{Kind, ResourceRef};

/// The caps of one run; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Limits {
    pub(crate) max_containers: Option<usize>,
    pub(crate) max_sandboxes: Option<usize>,
    /// Refuse creates beyond a cap at the proxy, in the API's own error shape.
    pub(crate) hard: bool,
}

impl Limits {
    pub(crate) fn cap(&self, kind: Kind) -> Option<usize> {
        match kind {
            Kind::Container => self.max_containers,
            Kind::Sandbox => self.max_sandboxes,
            _ => None,
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.max_containers.is_some() || self.max_sandboxes.is_some()
    }
}

/// The kinds limits count.
pub(crate) const COUNTED: [Kind; 2] = [Kind::Container, Kind::Sandbox];

/// One kind as admission sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KindCount {
    /// Live now, every task of the run together (tearing down or done too).
    pub(crate) live: usize,
    /// What each running task has live now.
    pub(crate) running: Vec<usize>,
    /// The most any task has had live at once; `None` until a task has ended.
    pub(crate) footprint: Option<usize>,
}

/// Why the scheduler holds the next task back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Waiting {
    pub(crate) kind: Kind,
    pub(crate) live: usize,
    pub(crate) limit: usize,
    /// Live, plus what running tasks may still create, plus one more task.
    pub(crate) expected: usize,
    /// No task has ended yet, so how many one creates is not known.
    pub(crate) learning: bool,
}

/// Whether the scheduler may start another task, for one kind with cap
/// `limit`. With nothing running or tearing down it always may: a cap no
/// single task fits under would otherwise stop the run for good.
pub(crate) fn admit(kind: Kind, count: &KindCount, limit: usize, busy: bool) -> Result<(), Waiting> {
    if !busy {
        return Ok(());
    }
    let waiting = |expected, learning| Waiting { kind, live: count.live, limit, expected, learning };
    let Some(footprint) = count.footprint else {
        if count.running.is_empty() {
            // Only teardowns are in flight, and none of those tasks ever ended: cannot happen
            // (a footprint is learnt when a task's processes end); wait for the count to drop.
            return if count.live < limit { Ok(()) } else { Err(waiting(count.live, false)) };
        }
        return Err(waiting(count.live, true));
    };
    let still_to_come: usize = count.running.iter().map(|live| footprint.saturating_sub(*live)).sum();
    let expected = count.live + still_to_come + footprint;
    match expected <= limit {
        true => Ok(()),
        false => Err(waiting(expected, false)),
    }
}

/// A create a proxy may not let through (`limits.hard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) kind: Kind,
    pub(crate) live: usize,
    pub(crate) limit: usize,
}

impl Refusal {
    /// For the harness's user, in the API's error body.
    pub(crate) fn message(&self) -> String {
        format!(
            "this run's limit of {} {} is reached ({} live or being created); the create was refused because \
             limits.hard is set in the benchmark file",
            self.limit,
            self.kind.plural(),
            self.live
        )
    }
}

/// What one task has live, and the most it has had at once.
#[derive(Debug, Default)]
struct TaskLive {
    live: [HashSet<String>; 2],
    peak: [usize; 2],
    /// Creates let through a hard cap, whose answer has not come yet.
    reserved: [usize; 2],
    running: bool,
    /// Its teardown has finished: what it still has was not removed.
    torn_down: bool,
    /// Its creates a hard cap refused.
    refused: usize,
}

impl TaskLive {
    /// A task the scheduler did not start here (a late event after its
    /// teardown): what it has counts, but it keeps no task busy.
    fn done() -> Self {
        TaskLive { torn_down: true, ..TaskLive::default() }
    }
}

#[derive(Debug, Default)]
struct State {
    tasks: HashMap<String, TaskLive>,
    footprint: [Option<usize>; 2],
    peak: [usize; 2],
    refused: [usize; 2],
}

fn slot(kind: Kind) -> Option<usize> {
    COUNTED.iter().position(|counted| *counted == kind)
}

impl State {
    fn live(&self, slot: usize) -> usize {
        self.tasks.values().map(|task| task.live[slot].len() + task.reserved[slot]).sum()
    }

    fn count(&self, slot: usize) -> KindCount {
        KindCount {
            live: self.live(slot),
            running: self.tasks.values().filter(|task| task.running).map(|task| task.live[slot].len()).collect(),
            footprint: self.footprint[slot],
        }
    }

    fn busy(&self) -> bool {
        self.tasks.values().any(|task| task.running || !task.torn_down)
    }

    /// Raises the peaks after a change of `task`'s count.
    fn note_peak(&mut self, task: &str, slot: usize) {
        let Some(entry) = self.tasks.get_mut(task) else {
            return;
        };
        entry.peak[slot] = entry.peak[slot].max(entry.live[slot].len());
        let task_peak = entry.peak[slot];
        self.footprint[slot] = self.footprint[slot].map(|footprint| footprint.max(task_peak));
        self.peak[slot] = self.peak[slot].max(self.live(slot));
    }
}

/// Figures of a run's limits, for its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LimitFigures {
    /// The most containers (sandboxes) live at once.
    pub(crate) peak_containers: usize,
    pub(crate) peak_sandboxes: usize,
    /// Creates refused at the proxy by `limits.hard`.
    pub(crate) refused_containers: usize,
    pub(crate) refused_sandboxes: usize,
}

/// A run's limits and what became of them: the JSON report's `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct LimitsReport {
    #[serde(flatten)]
    pub(crate) limits: Limits,
    #[serde(flatten)]
    pub(crate) figures: LimitFigures,
}

/// The live containers and sandboxes of one run, shared by the proxies,
/// the creation watcher and the scheduler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LiveResources {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, so that a waiting scheduler looks again.
    changed: Arc<watch::Sender<u64>>,
    limits: Limits,
}

/// A create let through a hard cap; it counts as live until its answer
/// comes. Dropped without [`Reservation::commit`], the create failed.
pub(crate) struct Reservation {
    live: LiveResources,
    task: String,
    slot: usize,
}

impl Reservation {
    /// The create succeeded with `id`.
    pub(crate) fn commit(self, id: &str) {
        self.live.add(&self.task, COUNTED[self.slot], id);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.live.change(|state| {
            if let Some(task) = state.tasks.get_mut(&self.task) {
                task.reserved[self.slot] = task.reserved[self.slot].saturating_sub(1);
            }
        });
    }
}

impl LiveResources {
    pub(crate) fn new(limits: Limits) -> Self {
        let (changed, _) = watch::channel(0);
        LiveResources { state: Arc::default(), changed: Arc::new(changed), limits }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while counting; the counts are still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn change<T>(&self, update: impl FnOnce(&mut State) -> T) -> T {
        let result = update(&mut self.lock());
        self.changed.send_modify(|version| *version = version.wrapping_add(1));
        result
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The scheduler starts `task`: from now on it counts as running.
    pub(crate) fn start(&self, task: &str) {
        self.change(|state| {
            state.tasks.insert(task.to_string(), TaskLive { running: true, ..TaskLive::default() });
        });
    }

    /// Every process of `task` is gone: it creates nothing more, so its
    /// peak is a footprint.
    pub(crate) fn processes_ended(&self, task: &str) {
        self.change(|state| {
            let Some(entry) = state.tasks.get_mut(task) else {
                return;
            };
            entry.running = false;
            let peak = entry.peak;
            for (slot, task_peak) in peak.into_iter().enumerate() {
                state.footprint[slot] = Some(state.footprint[slot].map_or(task_peak, |known| known.max(task_peak)));
            }
        });
    }

    /// `task`'s teardown is over; `left` is what it could not remove, which goes on counting.
    pub(crate) fn torn_down(&self, task: &str, left: &[ResourceRef]) {
        self.change(|state| {
            let Some(entry) = state.tasks.get_mut(task) else {
                return;
            };
            entry.torn_down = true;
            for (slot, ids) in entry.live.iter_mut().enumerate() {
                ids.retain(|id| left.iter().any(|resource| resource.kind == COUNTED[slot] && &resource.id == id));
            }
            if entry.live.iter().all(HashSet::is_empty) {
                state.tasks.remove(task);
            }
        });
    }

    /// `task` created `id` (seen by a proxy or the watcher; twice is once).
    /// Returns the task's live count of that kind when it changed.
    pub(crate) fn add(&self, task: &str, kind: Kind, id: &str) -> Option<usize> {
        let slot = slot(kind)?;
        self.change(|state| {
            let entry = state.tasks.entry(task.to_string()).or_insert_with(TaskLive::done);
            if !entry.live[slot].insert(id.to_string()) {
                return None;
            }
            let count = entry.live[slot].len();
            state.note_peak(task, slot);
            Some(count)
        })
    }

    /// `id` is gone (the engine said so); returns the task that had it and its new count.
    pub(crate) fn remove(&self, kind: Kind, id: &str) -> Option<(String, usize)> {
        let slot = slot(kind)?;
        self.change(|state| {
            let (task, entry) = state.tasks.iter_mut().find(|(_, entry)| entry.live[slot].contains(id))?;
            entry.live[slot].remove(id);
            let (task, count) = (task.clone(), entry.live[slot].len());
            if entry.torn_down && entry.live.iter().all(HashSet::is_empty) {
                state.tasks.remove(&task);
            }
            Some((task, count))
        })
    }

    /// With a hard cap on `kind`: one more create of `task`'s, or a refusal.
    /// Without one: `Ok(None)`, the create needs no reservation.
    pub(crate) fn reserve(&self, task: &str, kind: Kind) -> Result<Option<Reservation>, Refusal> {
        let (Some(limit), Some(slot)) = (self.limits.cap(kind).filter(|_| self.limits.hard), slot(kind)) else {
            return Ok(None);
        };
        self.change(|state| {
            let live = state.live(slot);
            if live >= limit {
                state.refused[slot] += 1;
                state.tasks.entry(task.to_string()).or_insert_with(TaskLive::done).refused += 1;
                return Err(Refusal { kind, live, limit });
            }
            state.tasks.entry(task.to_string()).or_insert_with(TaskLive::done).reserved[slot] += 1;
            Ok(())
        })?;
        Ok(Some(Reservation { live: self.clone(), task: task.to_string(), slot }))
    }

    /// Whether the scheduler may start another task now.
    pub(crate) fn admission(&self) -> Result<(), Waiting> {
        let state = self.lock();
        let busy = state.busy();
        for (slot, kind) in COUNTED.into_iter().enumerate() {
            if let Some(limit) = self.limits.cap(kind) {
                admit(kind, &state.count(slot), limit, busy)?;
            }
        }
        Ok(())
    }

    /// How many of `task`'s creates a hard cap refused.
    pub(crate) fn refused(&self, task: &str) -> usize {
        self.lock().tasks.get(task).map_or(0, |entry| entry.refused)
    }

    /// The limits and their figures, when the run has any limit.
    pub(crate) fn report(&self) -> Option<LimitsReport> {
        self.limits.any().then(|| LimitsReport { limits: self.limits, figures: self.figures() })
    }

    pub(crate) fn figures(&self) -> LimitFigures {
        let state = self.lock();
        LimitFigures {
            peak_containers: state.peak[0],
            peak_sandboxes: state.peak[1],
            refused_containers: state.refused[0],
            refused_sandboxes: state.refused[1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(live: usize, running: &[usize], footprint: Option<usize>) -> KindCount {
        KindCount { live, running: running.to_vec(), footprint }
    }

    #[test]
    fn the_first_task_runs_alone_until_its_footprint_is_known() {
        assert_eq!(admit(Kind::Container, &count(0, &[], None), 4, false), Ok(()));
        let waiting = admit(Kind::Container, &count(0, &[0], None), 4, true).unwrap_err();
        assert!(waiting.learning);
    }

    #[test]
    fn a_task_starts_only_when_live_plus_what_running_tasks_may_still_create_plus_one_footprint_fits() {
        // Tasks of 3 under a cap of 4: one at a time.
        assert!(admit(Kind::Container, &count(3, &[3], Some(3)), 4, true).is_err());
        // The running task has made 1 of its 3: 1 + 2 + 3 = 6 > 4.
        assert_eq!(admit(Kind::Container, &count(1, &[1], Some(3)), 4, true).unwrap_err().expected, 6);
        // A task tearing down still holds 2: 2 + 0 + 3 > 4.
        assert!(admit(Kind::Container, &count(2, &[], Some(3)), 4, true).is_err());
        // Once it is gone: 0 + 0 + 3 <= 4.
        assert_eq!(admit(Kind::Container, &count(0, &[], Some(3)), 4, true), Ok(()));
        // Tasks of 1 under a cap of 4: four at once.
        assert_eq!(admit(Kind::Container, &count(3, &[1, 1, 1], Some(1)), 4, true), Ok(()));
        assert!(admit(Kind::Container, &count(4, &[1, 1, 1, 1], Some(1)), 4, true).is_err());
        // A task that creates none never waits.
        assert_eq!(admit(Kind::Sandbox, &count(0, &[0; 8], Some(0)), 1, true), Ok(()));
    }

    #[test]
    fn a_task_bigger_than_the_cap_still_runs_alone() {
        assert_eq!(admit(Kind::Container, &count(0, &[], Some(9)), 4, false), Ok(()));
        assert!(admit(Kind::Container, &count(0, &[0], Some(9)), 4, true).is_err());
    }

    fn container(id: &str) -> ResourceRef {
        ResourceRef { kind: Kind::Container, id: id.to_string(), name: String::new() }
    }

    #[test]
    fn counts_follow_creates_destroys_and_teardown_and_footprints_are_learnt() {
        let live = LiveResources::new(Limits { max_containers: Some(4), max_sandboxes: None, hard: false });
        live.start("a");
        assert!(live.admission().unwrap_err().learning);
        assert_eq!(live.add("a", Kind::Container, "c1"), Some(1));
        assert_eq!(live.add("a", Kind::Container, "c1"), None, "seen twice, counted once");
        live.add("a", Kind::Container, "c2");
        live.add("a", Kind::Container, "c3");
        assert_eq!(live.remove(Kind::Container, "c3"), Some(("a".to_string(), 2)));
        live.processes_ended("a");
        // Footprint 3 (its peak), 2 still live while it tears down: 2 + 3 > 4.
        assert_eq!(live.admission().unwrap_err().expected, 5);
        live.torn_down("a", &[container("c2")]);
        // Nothing runs or tears down: the next task may start, though the leaked c2 still counts.
        assert_eq!(live.admission(), Ok(()));
        live.start("b");
        assert_eq!(live.admission().unwrap_err().live, 1, "b may make 3: 1 + 3 + 3 > 4");
        live.remove(Kind::Container, "c2");
        assert_eq!(live.admission().unwrap_err().live, 0, "c2 is gone at last");
        assert_eq!(live.figures().peak_containers, 3);
    }

    #[test]
    fn a_hard_cap_refuses_the_create_past_it_and_reservations_count_until_answered() {
        let live = LiveResources::new(Limits { max_containers: Some(2), max_sandboxes: None, hard: true });
        live.start("a");
        let first = live.reserve("a", Kind::Container).unwrap().unwrap();
        let second = live.reserve("a", Kind::Container).unwrap().unwrap();
        let refusal = live.reserve("a", Kind::Container).err().unwrap();
        assert_eq!((refusal.live, refusal.limit), (2, 2));
        assert!(refusal.message().contains("limit of 2 containers"), "{}", refusal.message());
        first.commit("c1");
        drop(second); // that create failed
        assert!(live.reserve("a", Kind::Container).unwrap().is_some());
        assert!(live.reserve("a", Kind::Sandbox).unwrap().is_none(), "no cap on sandboxes");
        assert_eq!(live.figures().refused_containers, 1);
    }
}
