//! The async runtime openraft runs on: tokio, with one difference that a
//! simulation needs. openraft draws its election timeouts and tick jitter
//! from `AsyncRuntime::thread_rng()`; production draws them from the
//! operating system, but a thread that called [`seed_thread_rng`] draws
//! them from a deterministic generator, so a seeded single-threaded
//! simulation replays the same elections.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::async_runtime::{AsyncRuntime, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand::SeedableRng;
use rand::rngs::SmallRng;

thread_local! {
    /// The simulation's generator state for this thread; None in
    /// production (OS randomness).
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes every later `thread_rng()` on this thread deterministic, derived
/// from `seed` (and from how many were drawn before). A simulation calls
/// it at the start of each seeded run, on the thread its current-thread
/// tokio runtime uses.
pub fn seed_thread_rng(seed: u64) {
    SEED.with(|s| s.set(Some(seed)));
}

/// Back to OS randomness on this thread.
pub fn unseed_thread_rng() {
    SEED.with(|s| s.set(None));
}

/// SplitMix64: the next generator seed from the current one.
fn next_seed(s: u64) -> u64 {
    let mut z = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// kaon's openraft runtime: [`TokioRuntime`] with a seedable
/// `thread_rng` (see the module docs).
#[derive(Debug)]
pub struct KaonRuntime {
    inner: TokioRuntime,
}

impl AsyncRuntime for KaonRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match SEED.with(|s| {
            let cur = s.get()?;
            s.set(Some(next_seed(cur)));
            Some(cur)
        }) {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        KaonRuntime {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    #[allow(clippy::manual_async_fn)] // the trait's signature
    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(io::Error::other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        let draw = || -> Vec<u64> {
            (0..4)
                .map(|_| KaonRuntime::thread_rng().random_range(0..1_000_000))
                .collect()
        };
        seed_thread_rng(42);
        let a = draw();
        seed_thread_rng(42);
        let b = draw();
        seed_thread_rng(43);
        let c = draw();
        unseed_thread_rng();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
