"""bench.profile's pure parts: reading perf report's output, naming Cython
symbols, the tables. perf itself is never run here."""

from __future__ import annotations

import pytest

from bench import profile
from bench.profile import SEP, Share

REPORT = f"""\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 9K of event 'cpu-clock:ppp'
# Event count (approx.): 2418000000
#
# Overhead{SEP}Shared Object{SEP}Symbol
 8.56% {SEP}[kernel.kallsyms]   {SEP}[k] _raw_spin_unlock_irqrestore
 3.82% {SEP}libpython3.11.so.1.0{SEP}[.] _PyEval_EvalFrameDefault
 0.51% {SEP}/srv/gateway/_native/proxy.cpython-311-x86_64-linux-gnu.so\
{SEP}[.] __pyx_f_7gateway_7_native_5proxy_14ClientProtocol__body_framed


"""


class TestReport:
    def test_lines_become_shares_in_order(self):
        shares = profile.parse_report(REPORT)
        assert shares == [
            Share(8.56, "[kernel.kallsyms]", "_raw_spin_unlock_irqrestore"),
            Share(3.82, "libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"),
            Share(0.51, "/srv/gateway/_native/proxy.cpython-311-x86_64-linux-gnu.so",
                  "__pyx_f_7gateway_7_native_5proxy_14ClientProtocol__body_framed"),
        ]
        assert [profile.is_kernel(s) for s in shares] == [True, False, False]

    def test_sorted_by_object_only(self):
        text = f"# Overhead{SEP}Shared Object\n 66.09% {SEP}[kernel.kallsyms]\n"
        assert profile.parse_report(text) == [Share(66.09, "[kernel.kallsyms]", "")]

    def test_sample_count_as_perf_wrote_it(self):
        assert profile.sample_count(REPORT) == "9K"
        assert profile.sample_count("") == "?"


class TestNames:
    @pytest.mark.parametrize(("symbol", "readable"), [
        ("__pyx_f_7gateway_7_native_5proxy_14ClientProtocol__body_framed",
         "proxy.ClientProtocol._body_framed [cdef]"),
        ("__pyx_pw_7gateway_7_native_5proxy_14ClientProtocol_21on_headers_complete",
         "proxy.ClientProtocol.on_headers_complete [py]"),
        ("__pyx_f_7gateway_7_native_9scheduler_9Scheduler__admit_at_once",
         "scheduler.Scheduler._admit_at_once [cdef]"),
        ("__pyx_pf_7gateway_7_native_9scheduler_9Scheduler___init__",
         "scheduler.Scheduler.__init__ [impl]"),
        ("__pyx_pw_7gateway_7_native_5proxy_8Exchange_1__init__",
         "proxy.Exchange.__init__ [py]"),
        ("__pyx_tp_dealloc_7gateway_7_native_5proxy_UpstreamServer",
         "proxy.UpstreamServer [tp_dealloc]"),
        # Module-level: the digits are a running number, not a class's length.
        ("__pyx_pw_7gateway_7_native_6bucket_1__pyx_unpickle_TokenBucket",
         "bucket.__pyx_unpickle_TokenBucket [py]"),
        ("__pyx_pw_7gateway_7_native_5proxy_5__pyx_unpickle_Exchange",
         "proxy.__pyx_unpickle_Exchange [py]"),
        ("__pyx_f_7gateway_7_native_4head__scan.constprop.0",
         "head._scan.constprop.0 [cdef]"),
        ("_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault"),
        ("__pyx_f_6uvloop_4loop_4Loop__run", "__pyx_f_6uvloop_4loop_4Loop__run"),
    ])
    def test_cython_symbols_demangled_others_kept(self, symbol, readable):
        assert profile.readable_symbol(symbol) == readable

    def test_extension_module_file_shortened(self):
        assert profile.short_dso("/a/b/proxy.cpython-311-x86_64-linux-gnu.so") == "proxy.so"
        assert profile.short_dso("[kernel.kallsyms]") == "[kernel.kallsyms]"


class TestTable:
    def test_share_times_cpu_per_request(self):
        shares = [Share(25.0, "libpython3.11.so.1.0", "_PyObject_Malloc")]
        header, _, line = profile.share_table(shares, 20.0, with_symbol=True).splitlines()
        assert [c.strip() for c in line.strip("|").split("|")] == [
            "25.00", "5.00", "libpython3.11.so.1.0", "_PyObject_Malloc"]
        assert "symbol" in header

    def test_without_cpu_figure_no_microseconds(self):
        shares = [Share(66.0, "[kernel.kallsyms]", "")]
        line = profile.share_table(shares, None, with_symbol=False).splitlines()[2]
        assert [c.strip() for c in line.strip("|").split("|")] == [
            "66.00", "-", "[kernel.kallsyms]"]
