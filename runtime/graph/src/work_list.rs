//! A tree of work (directories to read) shared by several threads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Visits every item of `start` and every item the visits add, on `threads` threads that
/// share one work list: `visit(item, more)` does the work of `item` and pushes onto `more`
/// the items found under it (a directory's subdirectories). Returns what each visit gave, in
/// no particular order. With one thread or none, or nothing to visit, everything is visited
/// on the calling thread (none is started).
pub fn work_list<T: Send, R: Send>(
    start: Vec<T>,
    threads: usize,
    visit: impl Fn(T, &mut Vec<T>) -> R + Sync,
) -> Vec<R> {
    if threads < 2 || start.is_empty() {
        let mut pending = start;
        let mut done = Vec::new();
        while let Some(item) = pending.pop() {
            done.push(visit(item, &mut pending));
        }
        return done;
    }
    let work = Mutex::new(start);
    // Items being visited: while any is, the list may still grow.
    let busy = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        let mut more = Vec::new();
        loop {
            let next = {
                let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
                let item = w.pop();
                if item.is_some() {
                    busy.fetch_add(1, Ordering::SeqCst);
                }
                item
            };
            let Some(item) = next else {
                if busy.load(Ordering::SeqCst) == 0 {
                    return done;
                }
                std::thread::yield_now();
                continue;
            };
            done.push(visit(item, &mut more));
            work.lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut more);
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a work-list thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::work_list;

    /// A tree of 1 + 10 + 100 + 1,000 nodes: every one visited once, on any number of threads.
    #[test]
    fn every_item_and_every_item_added_is_visited_once() {
        for threads in [0, 1, 2, 4] {
            let mut seen = work_list(vec![(0u32, 0u32)], threads, |(depth, id), more| {
                if depth < 3 {
                    more.extend((0..10).map(|k| (depth + 1, id * 10 + k)));
                }
                (depth, id)
            });
            seen.sort();
            assert_eq!(seen.len(), 1111, "{threads} threads");
            seen.dedup();
            assert_eq!(seen.len(), 1111, "{threads} threads");
        }
    }
}
