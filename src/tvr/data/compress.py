"""The seed repos' video compression (datasets spec §1.1): 3 fps, short side 224, video stream only.

CLIP4Clip runs ``ffmpeg -i in -filter:v scale=<formula> -map 0:v -r 3 out`` for every file. tvr runs the
same FFmpeg filters (``scale``, ``fps``) through PyAV, which bundles FFmpeg, so no system ffmpeg is
needed. The output keeps the input's file name (and container, hence FFmpeg's default codec for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tvr.atomic import replacing


def output_size(width: int, height: int, short_side: int = 224, portrait_quirk: bool = False) -> tuple[int, int]:
    """CLIP4Clip's scale filter: ``if(gt(a,1), trunc(oh*a/2)*2, 224) : if(gt(a,1), 224, trunc(ow*a/2)*2)``.

    Landscape: height = short side, width = even(short * a). Portrait/square: width = short side and, in
    the reference, height = even(short * a) — which squashes portrait video below the short side
    (9:16 -> 224x126). tvr computes even(short / a) unless ``portrait_quirk`` asks for the reference.
    """
    aspect = width / height
    if aspect > 1:
        return int(short_side * aspect / 2) * 2, short_side
    scaled = short_side * aspect if portrait_quirk else short_side / aspect
    return short_side, int(scaled / 2) * 2


@dataclass
class CompressResult:
    source: Path
    target: Path
    status: str  # "done", "skipped" (finished output existed) or "failed"
    error: str = ""


def compress_video(
    source: Path, target: Path, fps: int = 3, short_side: int = 224, portrait_quirk: bool = False
) -> CompressResult:
    """Transcode one file; an existing non-empty ``target`` is kept (resumable). Written to a temporary
    name and renamed, so an interrupted run never leaves a truncated output that looks finished."""
    import av

    if target.is_file() and target.stat().st_size > 0:
        return CompressResult(source, target, "skipped")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(source)) as reader, replacing(target) as tmp:
            if not reader.streams.video:
                raise ValueError("no video stream")
            in_stream = reader.streams.video[0]
            width, height = output_size(
                in_stream.codec_context.width, in_stream.codec_context.height, short_side, portrait_quirk
            )
            with av.open(str(tmp), mode="w", format=_format_for(target)) as writer:
                out_stream = writer.add_stream(writer.default_video_codec, rate=fps)
                out_stream.width, out_stream.height = width, height
                out_stream.pix_fmt = "yuv420p"
                graph = _filter_graph(in_stream, width, height, fps)
                for frame in reader.decode(in_stream):
                    graph.push(frame)
                    _drain(graph, out_stream, writer)
                graph.push(None)
                _drain(graph, out_stream, writer)
                for packet in out_stream.encode():
                    writer.mux(packet)
            if tmp.stat().st_size == 0:
                raise ValueError("encoder produced an empty file")
        return CompressResult(source, target, "done")
    except Exception as error:  # any FFmpeg/format problem: report, never copy the raw file silently
        return CompressResult(source, target, "failed", f"{type(error).__name__}: {error}")


def _format_for(target: Path) -> str:
    """FFmpeg's output format for the file name, as ``ffmpeg out.ext`` would guess it."""
    import av

    suffix = target.suffix.lower().lstrip(".")
    if not suffix:
        raise ValueError(
            f"'{target.name}' has no extension, so no container format can be chosen (ffmpeg fails the same way)"
        )
    aliases = {
        "mp4": "mp4",
        "m4v": "mp4",
        "mov": "mov",
        "avi": "avi",
        "mkv": "matroska",
        "webm": "webm",
        "3gp": "3gp",
        "3g2": "3g2",
        "mpg": "mpeg",
        "mpeg": "mpeg",
        "wmv": "asf",
        "asf": "asf",
        "flv": "flv",
        "ts": "mpegts",
        "mts": "mpegts",
        "m2ts": "mpegts",
        "qt": "mov",
    }
    if suffix not in aliases or aliases[suffix] not in av.formats_available:
        raise ValueError(f"no FFmpeg muxer for '.{suffix}'")
    return aliases[suffix]


def _filter_graph(in_stream, width: int, height: int, fps: int):
    import av

    graph = av.filter.Graph()
    chain = [
        graph.add_buffer(template=in_stream),
        graph.add("scale", f"{width}:{height}"),
        graph.add("fps", f"fps={fps}"),
        graph.add("format", "yuv420p"),
        graph.add("buffersink"),
    ]
    for upstream, downstream in zip(chain, chain[1:]):
        upstream.link_to(downstream)
    graph.configure()
    return graph


def _drain(graph, out_stream, writer) -> None:
    import av

    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        frame.time_base = frame.time_base or Fraction(1, int(out_stream.average_rate))
        for packet in out_stream.encode(frame):
            writer.mux(packet)
