"""trainctl: fetch a dataset's objects from S3 on the machine itself, with the machine's
own credentials (an EC2 instance role; elsewhere its environment or ~/.aws).

usage: python3 fetch_s3.py BUCKET PREFIX DEST NAMES_FILE
NAMES_FILE holds one name (under PREFIX) per line. Each object is written to a temp name
beside its place, then renamed: a fetch cut off leaves whole files only. Prints each
fetched file's size, one per line (trainctl's progress). Names that would leave DEST are
refused (trainctl checked them too).
"""
import os
import sys

import boto3


def main():
    bucket, prefix, dest, names = sys.argv[1:5]
    s3 = boto3.client("s3")
    root = os.path.realpath(dest)
    os.makedirs(root, exist_ok=True)
    with open(names, encoding="utf-8") as f:
        for line in f:
            rel = line.rstrip("\n")
            if not rel:
                continue
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(root + os.sep):
                sys.exit(f"refusing {rel!r}: it would leave {dest}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".trainctl-part"
            s3.download_file(bucket, prefix + rel, tmp)
            os.replace(tmp, path)
            print(os.path.getsize(path), flush=True)


if __name__ == "__main__":
    main()
