#!/usr/bin/env python3
"""Writes the small seed corpus of the config, shard and image fuzzers into
tests/fuzz/corpus/<target>/ (the checkpoint seeds come from `make fuzz-seeds`).
Standard library only; JPEG seeds are taken from `softmoe shards synth` output
when BIN is given: make_seeds.py [build/softmoe]."""
import glob, gzip, io, os, struct, subprocess, sys, tarfile, tempfile, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def png(w, h, color_type, bit_depth, rows, palette=None, trns=None):
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    if trns:
        out += chunk(b"tRNS", trns)
    raw = b"".join(b"\x00" + r for r in rows)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def images():
    w, h = 6, 5
    gray = [bytes((x * 40 + y * 7) % 256 for x in range(w)) for y in range(h)]
    rgb = [bytes(v for x in range(w) for v in (x * 40, y * 50, 255 - x * 30)) for y in range(h)]
    rgba = [bytes(v for x in range(w) for v in (x * 40, y * 50, 9, 128)) for y in range(h)]
    g16 = [b"".join(struct.pack(">H", (x * 9000 + y) % 65536) for x in range(w)) for y in range(h)]
    pal = [bytes((x + y) % 4 for x in range(w)) for y in range(h)]
    out = {
        "gray.png": png(w, h, 0, 8, gray),
        "rgb.png": png(w, h, 2, 8, rgb),
        "rgba.png": png(w, h, 6, 8, rgba),
        "gray16.png": png(w, h, 0, 16, g16),
        "palette.png": png(w, h, 3, 8, pal, palette=bytes(range(12)), trns=b"\x00\x80"),
    }
    return out


def tar_bytes(members, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    imgs = images()
    for name, data in imgs.items():
        put("image", name, data)
    jpgs = []
    if len(sys.argv) > 1:
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.argv[1], "shards", "synth", d + "/s", "2", "2"], check=True,
                           stdout=subprocess.DEVNULL)
            with tarfile.open(glob.glob(d + "/s-*.tar")[0]) as t:
                for m in t.getmembers():
                    if m.name.endswith(".jpg"):
                        jpgs.append(t.extractfile(m).read())
        for i, j in enumerate(jpgs):
            put("image", "synth%d.jpg" % i, j)

    members = [("0000.png", imgs["gray.png"]), ("0000.cls", b"3"),
               ("0001.png", imgs["rgb.png"]), ("0001.cls", b"1,5, 7\n"),
               ("0002.cls", b"2"), ("0002.cls", b"4"),            # ambiguous
               ("d/0003.png", imgs["palette.png"]), ("d/0003.json", b"{}"), ("d/0003.cls", b"x")]
    plain = tar_bytes(members)
    put("shards", "plain.tar", plain)
    put("shards", "plain.tar.gz", gzip.compress(plain, mtime=0))
    put("shards", "cut.tar.gz", gzip.compress(plain, mtime=0)[:-300])
    put("shards", "cut.tar", plain[:1800])
    bad = bytearray(plain)
    bad[512 * 2 + 148:512 * 2 + 156] = b"99999999"  # a header checksum
    put("shards", "badsum.tar", bytes(bad))
    try:
        z = subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True, check=True).stdout
        put("shards", "plain.tar.zst", z)
    except (OSError, subprocess.CalledProcessError):
        pass

    cfgs = sorted(glob.glob(os.path.join(ROOT, "configs", "*.ini")))
    for c in cfgs:
        with open(c, "rb") as f:
            put("config", os.path.basename(c), f.read())
    extra = {
        "overrides.ini": b"[model]\nwidth = 32\nheads = 2\n\0\0model.depth=3\0data.train=a;b.tar\0fewshot.pets=x|y",
        "unsafe_override.ini": b"[data]\nsource = shards\n\0\0data.train=;x\0data.val=a ;b",
        "comments.ini": b"; top\n[train] ; c\nsteps = 10 # c\n[schedule]\nwarmup_steps = 2\n\n[fewshot]\npets = a|b ; c\n",
        "dup.ini": b"[model]\nwidth = 32\nwidth = 64\n",
        "dupsec.ini": b"[model]\n[train]\n[model]\n",
        "include_self.ini": b"include = in.ini\n",
        "include_dir.ini": b"include = .\n",
        "include_dev.ini": b"include = /dev/null\n[model]\n",
        "moe.ini": b"[moe]\nexperts = 4\nslots = auto\ncapacity_factor = 1.5\nlayers = 0,2\n[optim]\nwd = a:1, */b:2\n",
        "nul.ini": b"[model]\nwidth = 6\0 4\n",
    }
    for name, data in extra.items():
        put("config", name, data)


if __name__ == "__main__":
    main()
