"""A skill that uses boto3 (path-style, placeholder keys) against an s3 backend through the
agent, and prints one JSON line per step: {step, ok, status, code, message, value}.

argv: endpoint URL, bucket."""

import base64
import json
import sys
import zlib
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="AKIAPLACEHOLDER00000",
    aws_secret_access_key="placeholder-secret-the-agent-drops",
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)


def step(name, call):
    try:
        value = call()
        print(json.dumps({"step": name, "ok": True, "value": value}), flush=True)
    except ClientError as err:
        error = err.response.get("Error", {})
        print(
            json.dumps(
                {
                    "step": name,
                    "ok": False,
                    "status": err.response["ResponseMetadata"]["HTTPStatusCode"],
                    "code": error.get("Code"),
                    "message": error.get("Message"),
                }
            ),
            flush=True,
        )


def raw(name, method, path, headers, body=None):
    request = urllib.request.Request(
        endpoint + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, text = response.status, response.read().decode()
            etag = response.headers.get("etag")
    except urllib.error.HTTPError as err:
        status, text, etag = err.code, err.read().decode(), None
    print(json.dumps({"step": name, "ok": status < 300, "status": status, "message": text}), flush=True)
    return etag


def keys(prefix):
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def delete(keys):
    answer = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]}
    )
    return [d["Key"] for d in answer.get("Deleted", [])]


step("get", lambda: s3.get_object(Bucket=bucket, Key="reports/2026/q1.csv")["Body"].read().decode())
step("get-masked", lambda: s3.get_object(Bucket=bucket, Key="reports/2026/customers/list.json")["Body"].read().decode())
step("get-masked-not-json", lambda: s3.get_object(Bucket=bucket, Key="reports/2026/customers/notes.txt")["Body"].read().decode())
step("get-outside", lambda: s3.get_object(Bucket=bucket, Key="reports/2025/q4.csv")["Body"].read().decode())
step("list", lambda: keys("reports/2026/"))
step("list-outside", lambda: keys("reports/"))
step("put", lambda: s3.put_object(Bucket=bucket, Key="reports/2026/new.csv", Body=b"n,1\n")["ETag"])
step("delete-some-outside", lambda: delete(["reports/2026/new.csv", "secret/keys.txt"]))
step(
    "copy-from-outside",
    lambda: s3.copy_object(
        Bucket=bucket, Key="reports/2026/copy.csv", CopySource={"Bucket": bucket, "Key": "secret/keys.txt"}
    )["CopyObjectResult"]["ETag"],
)
step(
    "copy",
    lambda: s3.copy_object(
        Bucket=bucket, Key="reports/2026/copy.csv", CopySource={"Bucket": bucket, "Key": "reports/2026/q1.csv"}
    )["CopyObjectResult"]["ETag"],
)
step("delete", lambda: delete(["reports/2026/new.csv"]))
presigned = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "reports/2026/q1.csv"})
raw("presigned", "GET", presigned[len(endpoint):], {})
raw(
    "signed-trailer",
    "PUT",
    f"/{bucket}/reports/2026/trailer.csv",
    {
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "0",
    },
    b"0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n",
)


def chunk_signed(pieces):
    """An aws-chunked body signed with placeholder chunk signatures (the agent re-signs)."""
    body = b""
    for piece in pieces + [b""]:
        body += b"%x;chunk-signature=%s\r\n" % (len(piece), b"0" * 64) + piece + b"\r\n"
    return body


def streaming_headers(pieces, mode="STREAMING-AWS4-HMAC-SHA256-PAYLOAD"):
    return {
        "x-amz-content-sha256": mode,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(sum(len(p) for p in pieces)),
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAPLACEHOLDER00000/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
    }


big = [b"a" * 65536, b"b" * 1000]
raw("chunk-signed-put", "PUT", f"/{bucket}/reports/2026/chunked.bin", streaming_headers(big), chunk_signed(big))
upload = s3.create_multipart_upload(Bucket=bucket, Key="reports/2026/multi.bin")["UploadId"]
part = [b"m" * 70000, b"n" * 5]
etag = raw(
    "chunk-signed-part",
    "PUT",
    f"/{bucket}/reports/2026/multi.bin?partNumber=1&uploadId={upload}",
    streaming_headers(part),
    chunk_signed(part),
)
step(
    "complete-multipart",
    lambda: s3.complete_multipart_upload(
        Bucket=bucket,
        Key="reports/2026/multi.bin",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )["Key"],
)
broken = chunk_signed([b"c" * 100]).replace(b"64;", b"zz;", 1)
raw("bad-framing", "PUT", f"/{bucket}/reports/2026/broken.bin", streaming_headers([b"c" * 100]), broken)


def trailer_body(data, checksum):
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\nx-amz-checksum-crc32:" + checksum + b"\r\n\r\n"


data = b"trailing checksums are kept\n"
crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
trailer = dict(streaming_headers([data], "STREAMING-UNSIGNED-PAYLOAD-TRAILER"), **{"x-amz-trailer": "x-amz-checksum-crc32"})
raw("unsigned-trailer", "PUT", f"/{bucket}/reports/2026/trailer.txt", trailer, trailer_body(data, crc))
raw("unsigned-trailer-bad-checksum", "PUT", f"/{bucket}/reports/2026/bad-sum.txt", trailer, trailer_body(data, b"AAAAAA=="))
raw("malformed-delete", "POST", f"/{bucket}?delete", {"content-type": "application/xml"}, b"<Delete><Object>")
