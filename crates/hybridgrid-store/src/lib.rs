//! The S3 calls hybridgrid makes to a site's object store: a bucket made when missing, files
//! streamed up in parts (multipart upload, each part read from the file as it is sent), listings,
//! downloads and deletions. The same calls on every provider: the local provider's stores and a
//! cloud's (Swift's `s3api`, Ceph RadosGW) speak the same S3.
//!
//! Requests are signed by `rusty-s3` (sans-IO) and sent by reqwest's blocking client. [`open`]
//! runs the calls on a thread of their own, inside the store's network namespace where the
//! provider names one (the local provider's emulated sites).
//!
//! Architecture invariant: no error, log line or panic message carries a signed URL's query (it
//! holds the access key) or a key: errors name the site, the endpoint and the object.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use hybridgrid_core::store::StoreAccess;
use reqwest::blocking::{Body, Client, Response};
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// The size of each part of a multipart upload (S3 wants 5 MiB to 5 GiB, at most 10,000 parts:
/// files up to 160 GiB at this size; larger files get larger parts).
pub const PART_SIZE: u64 = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// How long a signed request stays valid: long enough for a part over a slow link.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// How often a request the store answered 503 is sent again.
const BUSY_RETRIES: usize = 3;

/// What went wrong talking to a site's store.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum StoreError {
    /// cannot enter the network namespace `{netns}` of the store of site {site}
    Netns {
        site: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    /// the store of site {site} at {endpoint}: {what}: HTTP {status}{detail}
    Status {
        site: String,
        endpoint: String,
        what: String,
        status: u16,
        detail: String,
    },
    /// the store of site {site} at {endpoint} did not answer ({what})
    Unreachable {
        site: String,
        endpoint: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// the store of site {site} sent a reply that is not S3's ({what})
    Reply { site: String, what: String },
    /// `{endpoint}` is not an S3 endpoint (site {site}): write http(s)://host[:port]
    Endpoint { site: String, endpoint: String },
    /// {path}
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// A connection to one site's store (see [`open`]).
#[derive(Debug)]
pub struct Store<'a> {
    access: &'a StoreAccess,
    credentials: Credentials,
    http: Client,
}

/// Runs `f` with a connection to `access`'s store, on a thread of its own that first enters the
/// store's network namespace, if it has one (sockets belong to the namespace of the thread that
/// makes them; reqwest's own threads start from this one and inherit it).
pub fn open<R: Send>(
    access: &StoreAccess,
    f: impl FnOnce(&Store<'_>) -> Result<R, StoreError> + Send,
) -> Result<R, StoreError> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            if let Some(ns) = &access.netns {
                enter_netns(&access.site, ns)?;
            }
            let http = Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(None)
                .build()
                .map_err(|source| unreachable(access, "starting the HTTP client", source))?;
            let store = Store {
                access,
                credentials: Credentials::new(&access.access_key, &access.secret_key),
                http,
            };
            f(&store)
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn enter_netns(site: &str, ns: &str) -> Result<(), StoreError> {
    let path = Path::new("/run/netns").join(ns);
    let fail = |source: std::io::Error| StoreError::Netns {
        site: site.to_owned(),
        netns: ns.to_owned(),
        source,
    };
    let file = File::open(&path).map_err(fail)?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail(std::io::Error::from(e)))
}

fn unreachable(access: &StoreAccess, what: &str, source: reqwest::Error) -> StoreError {
    StoreError::Unreachable {
        site: access.site.clone(),
        endpoint: access.endpoint.clone(),
        what: what.to_owned(),
        source: source.without_url(),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store<'_> {
    fn bucket(&self, name: &str) -> Result<Bucket, StoreError> {
        let bad = || StoreError::Endpoint {
            site: self.access.site.clone(),
            endpoint: self.access.endpoint.clone(),
        };
        let endpoint = url::Url::parse(&self.access.endpoint).map_err(|_| bad())?;
        Bucket::new(
            endpoint,
            UrlStyle::Path,
            name.to_owned(),
            self.access.region.clone(),
        )
        .map_err(|_| bad())
    }

    /// Sends a request, a status outside 2xx (and `also_ok`) an error naming `what`.
    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
        what: &str,
        also_ok: &[u16],
    ) -> Result<Response, StoreError> {
        let response = self.send_retrying_busy(request, what)?;
        let status = response.status().as_u16();
        if response.status().is_success() || also_ok.contains(&status) {
            return Ok(response);
        }
        let body = response.text().unwrap_or_default();
        Err(StoreError::Status {
            site: self.access.site.clone(),
            endpoint: self.access.endpoint.clone(),
            what: what.to_owned(),
            status,
            detail: s3_error_code(&body)
                .map(|c| format!(" {c}"))
                .unwrap_or_default(),
        })
    }

    /// Sends `request`; a store that answers 503 (busy, or a server behind it not listening
    /// yet: S3's "SlowDown") gets the same request again after 0.5, 1 and 2 s, unless its body
    /// is a stream that was read already (a part of a file: the caller's error).
    fn send_retrying_busy(
        &self,
        request: reqwest::blocking::RequestBuilder,
        what: &str,
    ) -> Result<Response, StoreError> {
        let mut pause = Duration::from_millis(500);
        let mut request = request;
        for _ in 0..BUSY_RETRIES {
            let again = request.try_clone();
            let response = request
                .send()
                .map_err(|source| unreachable(self.access, what, source))?;
            match again {
                Some(next) if response.status().as_u16() == 503 => {
                    std::thread::sleep(pause);
                    pause *= 2;
                    request = next;
                }
                _ => return Ok(response),
            }
        }
        request
            .send()
            .map_err(|source| unreachable(self.access, what, source))
    }

    fn text(&self, response: Response, what: &str) -> Result<String, StoreError> {
        response
            .text()
            .map_err(|source| unreachable(self.access, what, source))
    }

    fn reply_error(&self, what: &str) -> StoreError {
        StoreError::Reply {
            site: self.access.site.clone(),
            what: what.to_owned(),
        }
    }

    /// Whether `bucket` exists (and these keys may see it).
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, StoreError> {
        let b = self.bucket(bucket)?;
        let url = b.head_bucket(Some(&self.credentials)).sign(SIGNED_FOR);
        let what = format!("looking up bucket {bucket}");
        let response = self.send(self.http.head(url), &what, &[404])?;
        Ok(response.status().as_u16() != 404)
    }

    /// Makes `bucket` unless it exists; whether it made it.
    pub fn ensure_bucket(&self, bucket: &str) -> Result<bool, StoreError> {
        if self.bucket_exists(bucket)? {
            return Ok(false);
        }
        let b = self.bucket(bucket)?;
        let action = b.create_bucket(&self.credentials);
        let url = action.sign(SIGNED_FOR);
        let what = format!("creating bucket {bucket}");
        self.send(self.http.put(url).body(action.body()), &what, &[])?;
        Ok(true)
    }

    /// Uploads the file at `path` as `key`, in parts of [`PART_SIZE`] above that size, each read
    /// from the file while it is sent; `progress` gets the bytes sent so far after each part.
    /// An upload that fails part-way is aborted, so no parts are left behind.
    pub fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        let size = std::fs::metadata(path).map_err(io(path))?.len();
        if size <= PART_SIZE {
            let b = self.bucket(bucket)?;
            let url = b.put_object(Some(&self.credentials), key).sign(SIGNED_FOR);
            let file = File::open(path).map_err(io(path))?;
            let what = format!("uploading {key}");
            self.send(self.http.put(url).body(Body::sized(file, size)), &what, &[])?;
            progress(size);
            return Ok(size);
        }
        let upload_id = self.start_multipart(bucket, key)?;
        match self.send_parts(bucket, key, &upload_id, path, size, progress) {
            Ok(etags) => self.complete_multipart(bucket, key, &upload_id, &etags)?,
            Err(e) => {
                self.abort_multipart(bucket, key, &upload_id);
                return Err(e);
            }
        }
        Ok(size)
    }

    fn start_multipart(&self, bucket: &str, key: &str) -> Result<String, StoreError> {
        let b = self.bucket(bucket)?;
        let url = b
            .create_multipart_upload(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let what = format!("starting the upload of {key}");
        let response = self.send(self.http.post(url), &what, &[])?;
        let text = self.text(response, &what)?;
        let reply =
            CreateMultipartUpload::parse_response(&text).map_err(|_| self.reply_error(&what))?;
        Ok(reply.upload_id().to_owned())
    }

    fn send_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<String>, StoreError> {
        let b = self.bucket(bucket)?;
        let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS));
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = part_size.min(size - offset);
            let number = u16::try_from(etags.len() + 1).unwrap_or(u16::MAX);
            let url = b
                .upload_part(Some(&self.credentials), key, number, upload_id)
                .sign(SIGNED_FOR);
            let mut file = File::open(path).map_err(io(path))?;
            file.seek(SeekFrom::Start(offset)).map_err(io(path))?;
            let what = format!("uploading part {number} of {key}");
            let body = Body::sized(file.take(len), len);
            let response = self.send(self.http.put(url).body(body), &what, &[])?;
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.reply_error(&what))?;
            etags.push(etag.to_owned());
            offset += len;
            progress(offset);
        }
        Ok(etags)
    }

    fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), StoreError> {
        let b = self.bucket(bucket)?;
        let action = b.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let what = format!("completing the upload of {key}");
        let response = self.send(self.http.post(url).body(action.body()), &what, &[])?;
        // S3 may answer 200 with an error document once the parts are joined.
        let text = self.text(response, &what)?;
        match s3_error_code(&text) {
            Some(code) => Err(StoreError::Status {
                site: self.access.site.clone(),
                endpoint: self.access.endpoint.clone(),
                what,
                status: 200,
                detail: format!(" {code}"),
            }),
            None => Ok(()),
        }
    }

    /// Best effort: the error that led here is the one reported.
    fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) {
        if let Ok(b) = self.bucket(bucket) {
            let url = b
                .abort_multipart_upload(Some(&self.credentials), key, upload_id)
                .sign(SIGNED_FOR);
            let _ = self.http.delete(url).send();
        }
    }

    /// Every object under `prefix` in `bucket`, in key order.
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Object>, StoreError> {
        let b = self.bucket(bucket)?;
        let what = format!("listing bucket {bucket}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = b.list_objects_v2(Some(&self.credentials));
            if !prefix.is_empty() {
                action.with_prefix(prefix);
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let response = self.send(self.http.get(action.sign(SIGNED_FOR)), &what, &[])?;
            let text = self.text(response, &what)?;
            let page = ListObjectsV2::parse_response(&text).map_err(|_| self.reply_error(&what))?;
            out.extend(page.contents.into_iter().map(|c| Object {
                key: c.key,
                size: c.size.unwrap_or(0),
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Writes object `key` of `bucket` to `out`; `progress` gets the bytes so far.
    pub fn get_to(
        &self,
        bucket: &str,
        key: &str,
        out: &mut dyn Write,
        out_name: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        let b = self.bucket(bucket)?;
        let url = b.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let what = format!("downloading {key}");
        let mut response = self.send(self.http.get(url), &what, &[])?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        loop {
            let n = response.read(&mut buf).map_err(|e| StoreError::Io {
                path: format!("{} (from the store of site {})", key, self.access.site),
                source: e,
            })?;
            if n == 0 {
                return Ok(done);
            }
            out.write_all(&buf[..n]).map_err(io(out_name))?;
            done += n as u64;
            progress(done);
        }
    }

    /// Deletes object `key` of `bucket` (no error if it was not there).
    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        let b = self.bucket(bucket)?;
        let url = b
            .delete_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let what = format!("deleting {key}");
        self.send(self.http.delete(url), &what, &[404]).map(drop)
    }
}

/// The `<Code>` of an S3 error document, if `body` is one.
fn s3_error_code(body: &str) -> Option<&str> {
    if !body.contains("<Error>") {
        return None;
    }
    let start = body.find("<Code>")? + "<Code>".len();
    let end = start + body[start..].find("</Code>")?;
    Some(&body[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_document_gives_its_code() {
        let body =
            "<?xml version='1.0'?>\n<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(s3_error_code(body), Some("NoSuchBucket"));
        assert_eq!(s3_error_code("<CompleteMultipartUploadResult/>"), None);
    }
}
