"""A test-only tab: one slow button (as tagging or model loading is) and one quick button."""

import time


def build(ctx) -> None:
    import gradio as gr
    out = gr.Textbox(elem_id="test_slow_out")
    gr.Button("slow", elem_id="test_slow").click(lambda: time.sleep(4) or "slow done", inputs=[], outputs=[out])
    gr.Button("fast", elem_id="test_fast").click(lambda: "fast done", inputs=[], outputs=[out])
