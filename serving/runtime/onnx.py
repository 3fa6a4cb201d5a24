"""ONNX Runtime execution of a student graph (FP32, FP16 with FP32 I/O, or INT8 Q/DQ).

CPU by default; ``providers=["CUDAExecutionProvider", "CPUExecutionProvider"]`` uses the GPU
where onnxruntime-gpu is installed. ``session.run`` is thread-safe, so one session serves every
worker thread.

``emulate_qdq=True`` keeps Q/DQ nodes unfused (basic graph optimisations only), so a Q/DQ graph
is computed exactly as written: quantize, dequantize, float op. These are the graph's reference
semantics; TensorRT does *not* run them: it fuses Q/DQ into INT8 kernels and approximates them.
With full optimisations (the default, and what ``fdkd serve`` runs) ONNX Runtime also fuses Q/DQ
into its own INT8 kernels, whose S8S8 path saturates on x86 CPUs without VNNI (seen here: 10
points of accuracy lost on an AVX2 machine); the CPU variant ``student.int8cpu.onnx`` (U8S8,
reduced range) exists for those.

``mode()`` is the execution mode as a dict (runtime, provider, graph optimisation level, Q/DQ
fused or emulated, threads, the ONNX Runtime version, and for Q/DQ fused on the CPU the INT8 kernel family,
``fdkd.serving.runtime.cpu_isa``): validation records it next to each result, and the server loads an
artifact only in a mode that was validated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRuntime:
    kind = "onnxruntime"

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int | None = None,
                 emulate_qdq: bool = False, mem_pattern: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.emulate_qdq = emulate_qdq
        self.threads = threads or None
        # op types are stored verbatim in the protobuf: a graph without this string has no Q/DQ node
        self.has_qdq = b"QuantizeLinear" in self.path.read_bytes() if self.path.exists() else False
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if emulate_qdq:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        # ORT plans one block per input shape after a shape's first run and keeps it beside its arena: a pass over
        # many full chunks holds ~1.5x what one chunk does (validation at 7,500 rows vs 300, measured). A pass over a
        # dataset turns it off; the results are the same (it places buffers, it computes nothing)
        opts.enable_mem_pattern = mem_pattern
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types for bad or truncated files
            raise ValueError(f"ONNX Runtime cannot load {self.path}: {e}") from None
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        self.ort_version = ort.__version__  # kernels change between releases: part of the validated mode

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(self.output_names[:1], {self.input_name: x})[0]

    def mode(self) -> dict:
        """How this session computes: what validation records and what the server must match."""
        mode = {"runtime": self.kind, "provider": self.providers[0],
                "graph_optimization": "basic" if self.emulate_qdq else "all",
                "qdq": ("emulated" if self.emulate_qdq else "fused") if self.has_qdq else None,
                "threads": self.threads, "ort_version": self.ort_version}
        if mode["qdq"] == "fused" and mode["provider"] == "CPUExecutionProvider":
            from fdkd.serving.runtime.cpu_isa import int8_kernels

            mode["int8_kernels"] = int8_kernels()  # fused INT8 results depend on the CPU's kernel family
        return mode

    def describe(self) -> dict:
        return {"runtime": self.kind, "providers": self.providers, "input": self.input_name,
                "input_shape": self.input_shape, "outputs": self.output_names, "emulate_qdq": self.emulate_qdq,
                "mode": self.mode()}
