def wrap_gradio_gpu_call(fn, extra_outputs=None):
    return fn
