//! An undo stack for multi-step creation: every step that made something registers how to
//! take it away again; if the whole creation does not reach `commit`, the steps are undone
//! in reverse order when the stack is dropped (on an early `?` return or a panic).

/// One registered undo action and the name of the step it undoes.
type Step = (&'static str, Box<dyn FnOnce() + Send>);

/// Undo actions, run last-in first-out unless committed.
#[derive(Default)]
pub struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers how to undo the step just done. `what` names it in the log if undoing it
    /// is ever needed.
    pub fn push(&mut self, what: &'static str, undo: impl FnOnce() + Send + 'static) {
        self.steps.push((what, Box::new(undo)));
    }

    /// The creation succeeded: keep everything.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            tracing::debug!(step = what, "undoing");
            undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A shared log, and a maker of undo actions that append their name to it.
    fn recorder() -> (Log, impl Fn(&'static str) -> Box<dyn FnOnce() + Send>) {
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let make = move |name: &'static str| -> Box<dyn FnOnce() + Send> {
            let l = l.clone();
            Box::new(move || l.lock().unwrap().push(name))
        };
        (log, make)
    }

    #[test]
    fn undoes_in_reverse_when_dropped() {
        let (log, step) = recorder();
        {
            let mut undo = Undo::new();
            undo.push("a", step("a"));
            undo.push("b", step("b"));
            undo.push("c", step("c"));
        }
        assert_eq!(*log.lock().unwrap(), ["c", "b", "a"]);
    }

    #[test]
    fn commit_keeps_everything() {
        let (log, step) = recorder();
        let mut undo = Undo::new();
        undo.push("a", step("a"));
        undo.commit();
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn an_early_error_return_undoes() {
        let (log, step) = recorder();
        let create = |fail: bool| -> Result<(), &'static str> {
            let mut undo = Undo::new();
            undo.push("netns", step("netns"));
            if fail {
                return Err("CNI failed");
            }
            undo.push("cni", step("cni"));
            undo.commit();
            Ok(())
        };
        assert!(create(true).is_err());
        assert_eq!(*log.lock().unwrap(), ["netns"]);
        create(false).unwrap();
        assert_eq!(*log.lock().unwrap(), ["netns"]);
    }
}
