"""A skill that uses boto3 (path-style, placeholder keys) against an s3 backend through the
agent, and prints one JSON line per step: {step, ok, status, code, message, value}.

argv: endpoint URL, bucket."""

import json
import sys
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
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    print(json.dumps({"step": name, "ok": status < 300, "status": status, "message": text}), flush=True)


def keys(prefix):
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def delete(keys):
    answer = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]}
    )
    return [d["Key"] for d in answer.get("Deleted", [])]


step("get", lambda: s3.get_object(Bucket=bucket, Key="reports/2026/q1.csv")["Body"].read().decode())
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
    "streaming",
    "PUT",
    f"/{bucket}/reports/2026/chunked.csv",
    {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-encoding": "aws-chunked"},
    b"0;chunk-signature=00\r\n\r\n",
)
raw("malformed-delete", "POST", f"/{bucket}?delete", {"content-type": "application/xml"}, b"<Delete><Object>")
