# trainctl block delta helper, run on the machine by `python3 -c`.
# usage: sums BLOCK PATH...   -> one line per path: "<path-index> <sha256-hex> <sha256-hex> ..."
#        patch                -> reads stdin: for each file a header line (JSON) then the block
#                               bytes; rebuilds each file in a temp copy, checks its SHA-256
#                               and renames it over (exit 3 and the paths that did not match).
import hashlib, json, os, shutil, sys

def sums(block, paths):
    out = sys.stdout
    for i, p in enumerate(paths):
        hs = []
        try:
            with open(p, "rb") as f:
                while True:
                    b = f.read(block)
                    if not b:
                        break
                    hs.append(hashlib.sha256(b).hexdigest()[:32])
        except OSError:
            hs = ["-"]
        out.write("%d %s\n" % (i, " ".join(hs)))

def patch():
    # Each rebuilt file is checked against the SHA-256 of the sender's copy before it
    # replaces the old one; the files that do not match (changed on the machine since their
    # block sums were read) are left alone and listed on stdout, and the exit status is 3.
    inp = sys.stdin.buffer
    failed = []
    while True:
        line = inp.readline()
        if not line:
            break
        h = json.loads(line)
        path, tmp = h["path"], h["path"] + ".trainctl-part"
        shutil.copyfile(path, tmp)
        with open(tmp, "r+b") as f:
            for off, n in h["blocks"]:
                data = inp.read(n)
                if len(data) != n:
                    raise SystemExit("truncated patch for " + path)
                f.seek(off)
                f.write(data)
            f.truncate(h["size"])
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != h["sha256"]:
            os.remove(tmp)
            failed.append(path)
            continue
        os.chmod(tmp, h["mode"])
        os.replace(tmp, path)
    if failed:
        for p in failed:
            sys.stdout.write(json.dumps(p) + "\n")
        sys.exit(3)

if sys.argv[1] == "sums":
    sums(int(sys.argv[2]), sys.argv[3:])
else:
    patch()
