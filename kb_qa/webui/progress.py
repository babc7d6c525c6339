"""A running upload's / rebuild's progress and the last job's report. The page draws it at once and follows the job
at the end of the run, redrawing on every change the worker (kb_qa.jobs) reports, until it is done."""

from __future__ import annotations

import streamlit as st

from kb_qa.webui.shared import shared_jobs
from kb_qa.webui.support import md_literal, outcome_counts, outcome_rows, plural

HEARTBEAT_S = 0.25  # a running upload / rebuild is redrawn on each change, and at least this often (seconds)


def job_progress(name: str):
    """This KB's running jobs' progress, drawn now into a box of its own, then the last job's report. Returns
    None, or while a job runs the function main() calls at the very end of the run (so the whole page is drawn
    first) to follow it: it redraws the box on every change the worker reports (kb_qa.jobs.wait_for_change,
    not a polling timer, so each file's step is shown however quick) and reruns the page once the job is done."""
    runner = shared_jobs()
    box = st.empty()
    version = runner.version()  # read before drawing: a change made meanwhile is drawn by follow()
    draw_progress(box, runner, name)
    last = runner.latest(name)
    if last is not None and not last.active and last.id not in st.session_state.get("dismissed", set()):
        show_report(runner.snapshot(last))
    if not runner.active(name):
        return None

    def follow() -> None:
        seen = version
        while runner.active(name):
            seen = runner.wait_for_change(seen, HEARTBEAT_S)
            draw_progress(box, runner, name)  # also the heartbeat: a click's rerun stops this run at an st call
        st.rerun()  # done: draw the report and the new documents

    return follow


def draw_progress(box, runner, name: str) -> None:
    with box.container():
        for job in runner.active(name):
            job = runner.snapshot(job)
            what = "Rebuilding" if job.kind == "rebuild" else "Indexing"
            text = (f"{what} {name}: {job.files_done}/{job.files_total} files · {plural(job.chunks_done, 'chunk')}"
                    + (f" · {job.current}" if job.current and job.kind == "upload" else "")
                    + (" (queued)" if job.state == "queued" else ""))
            st.progress(job.fraction, text=md_literal(text))


def show_report(job) -> None:
    if job.error:
        st.error(md_literal(f"{job.kb}: {'rebuild' if job.kind == 'rebuild' else 'upload'} failed: {job.error}"),
                 icon=":material/error:")
    summary = f"{job.kb}: {outcome_counts(job.outcomes)} ({job.seconds:.1f} s)"
    (st.warning if job.failed or job.error else st.success)(md_literal(summary))
    if job.outcomes:
        st.dataframe(outcome_rows(job.outcomes), hide_index=True, width="stretch")
    st.button("Dismiss", key=f"dismiss_{job.id}", type="tertiary", on_click=lambda: st.session_state.setdefault(
        "dismissed", set()).add(job.id))
