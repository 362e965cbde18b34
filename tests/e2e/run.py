"""Runs the end-to-end tests: every test_* function in tests/e2e/test_*.py.

usage: run.py [-k SUBSTRING] [MODULE ...]

A module may define setup_module()/teardown_module() (e.g. one shared server); a test is a plain
function or a coroutine function (then it runs on a fresh event loop). Each test has a time limit
(module attribute TIMEOUT or the test's own .timeout, default 60 s). After every test each running
server must still be alive with no sanitizer report in its log. Prints PASS/FAIL lines and ends
with "e2e: N passed, N failed"; exits 1 if anything failed.

A test that fails while every server is alive and clean runs once more: on a loaded machine a real
peer (Kannel, libpurple, Postfix...) can miss a deadline. Passing on the second run counts as a
pass but is printed as RETRY-PASS with the first failure, and listed before the final line, so
it is seen and fixed; a crash, a sanitizer report or a second failure always fails.
"""

import asyncio
import importlib
import inspect
import signal
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

DEFAULT_TIMEOUT = 60


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout()


def _reason(exc):
    if isinstance(exc, Timeout):
        return 'timed out'
    if isinstance(exc, AssertionError) and str(exc):
        return str(exc)
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return ''.join(tb[-3:]).strip()


def _call(fn, timeout):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout + 5)
    try:
        if inspect.iscoroutinefunction(fn):
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(asyncio.wait_for(fn(), timeout))
            except asyncio.TimeoutError:
                raise Timeout()
            finally:
                harness.cleanup_clients()
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                try:
                    loop.run_until_complete(asyncio.wait_for(
                        asyncio.gather(*tasks, return_exceptions=True), 5))
                except BaseException:
                    pass
                loop.close()
                asyncio.set_event_loop(None)
        else:
            fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _servers_healthy():
    """True when every live server is running and its log has no sanitizer report."""
    try:
        harness.check_servers()
    except BaseException:
        return False
    return all(srv.alive() for srv in harness._live_servers)


def run_module(mod, pattern, results, retried):
    tests = [(n, f) for n, f in vars(mod).items()
             if n.startswith('test_') and callable(f)
             and getattr(f, '__module__', '') == mod.__name__]
    tests.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
    if pattern:
        tests = [(n, f) for n, f in tests if pattern in '%s.%s' % (mod.__name__, n)]
    if not tests:
        return
    mod_timeout = getattr(mod, 'TIMEOUT', DEFAULT_TIMEOUT)
    if hasattr(mod, 'setup_module'):
        try:
            _call(mod.setup_module, 60)
        except BaseException as e:
            for n, _ in tests:
                results.append(False)
                print('FAIL %s.%s: setup_module: %s' % (mod.__name__, n, _reason(e)), flush=True)
            harness.stop_all_servers()
            return
    for name, fn in tests:
        full = '%s.%s' % (mod.__name__, name)
        t0 = time.monotonic()
        try:
            _call(fn, getattr(fn, 'timeout', mod_timeout))
            harness.check_servers()
            results.append(True)
            print('PASS %s (%.1fs)' % (full, time.monotonic() - t0), flush=True)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            first = _reason(e)
            if not isinstance(e, KeyboardInterrupt) and _servers_healthy():
                print('RETRY %s: %s' % (full, first), flush=True)
                t0 = time.monotonic()
                try:
                    _call(fn, getattr(fn, 'timeout', mod_timeout))
                    harness.check_servers()
                    results.append(True)
                    retried.append('%s (first: %s)' % (full, first.splitlines()[0][:200]))
                    print('RETRY-PASS %s (%.1fs)' % (full, time.monotonic() - t0), flush=True)
                    continue
                except KeyboardInterrupt:
                    raise
                except BaseException as e2:
                    e = e2
            results.append(False)
            print('FAIL %s: %s' % (full, _reason(e)), flush=True)
            # A crashed shared server would fail every later test for the same reason.
            for srv in list(harness._live_servers):
                if not srv.alive():
                    srv._close()
                    srv.cleanup(keep=True)
    if hasattr(mod, 'teardown_module'):
        try:
            _call(mod.teardown_module, 30)
        except BaseException as e:
            results.append(False)
            print('FAIL %s.teardown_module: %s' % (mod.__name__, _reason(e)), flush=True)
    harness.stop_all_servers()


def main(argv):
    pattern = None
    names = []
    it = iter(argv)
    for a in it:
        if a == '-k':
            pattern = next(it, None)
        else:
            names.append(Path(a).stem)
    if not names:
        names = sorted(p.stem for p in HERE.glob('test_*.py'))
    results = []
    retried = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except BaseException as e:
            results.append(False)
            print('FAIL %s: import: %s' % (name, _reason(e)), flush=True)
            continue
        run_module(mod, pattern, results, retried)
    for r in retried:
        print('passed only on a second run: %s' % r, flush=True)
    passed = sum(results)
    failed = len(results) - passed
    print('e2e: %d passed, %d failed' % (passed, failed), flush=True)
    return 1 if failed or not results else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
