//! Images and the build cache on the Docker engine: listing images (by
//! label), which containers use which image, removing one image without
//! force, and pruning the build cache down to a size.

use std::collections::{BTreeMap, HashMap};

use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, RemoveImageOptions};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::docker::{DockerBackend, DockerError};
use crate::net::http::Buffered;
use crate::resource::LabelSelector;

/// An image as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct EngineImage {
    pub(crate) id: String,
    pub(crate) tags: Vec<String>,
    /// Unix seconds.
    pub(crate) created: i64,
    /// Bytes, its shared layers included.
    pub(crate) size: u64,
    pub(crate) labels: BTreeMap<String, String>,
}

/// A container, by the image it runs and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageUser {
    pub(crate) image_id: String,
    pub(crate) container: String,
    pub(crate) labels: BTreeMap<String, String>,
}

/// How one image removal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageRemoved {
    /// The engine deleted the image.
    Deleted,
    /// It was gone already.
    Gone,
}

impl DockerBackend {
    /// Images with these labels (all of them, with none); with
    /// `intermediate`, the layers of builds too (an image a later build
    /// used as its parent is still there, though a plain list hides it).
    pub(crate) async fn list_images(
        &self,
        labels: &[LabelSelector],
        intermediate: bool,
    ) -> Result<Vec<EngineImage>, DockerError> {
        let mut filters = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".to_string(), labels.iter().map(LabelSelector::to_filter).collect());
        }
        let options = ListImagesOptions { all: intermediate, filters: Some(filters), ..Default::default() };
        let images =
            self.read("list images", || async { Ok(self.client().list_images(Some(options.clone())).await?) }).await?;
        Ok(images
            .into_iter()
            .map(|image| EngineImage {
                id: image.id,
                tags: image.repo_tags.into_iter().filter(|tag| tag != "<none>:<none>").collect(),
                created: image.created,
                size: u64::try_from(image.size).unwrap_or(0),
                labels: image.labels.into_iter().collect(),
            })
            .collect())
    }

    /// Every container, running or not, with the image id it was made from.
    pub(crate) async fn image_users(&self) -> Result<Vec<ImageUser>, DockerError> {
        let options = ListContainersOptions { all: true, ..Default::default() };
        let containers = self
            .read("list containers", || async { Ok(self.client().list_containers(Some(options.clone())).await?) })
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let name = container.names.and_then(|names| names.into_iter().next()).unwrap_or_default();
                Some(ImageUser {
                    image_id: container.image_id?,
                    container: name.trim_start_matches('/').to_string(),
                    labels: container.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    /// Removes one image, never by force (an image a container uses stays,
    /// with a 409). `tags` are first untagged, each only while it still
    /// names this image: an image with several tags cannot be removed by id
    /// without force, and a tag moved to another image is not ours to take.
    pub(crate) async fn remove_image(&self, id: &str, tags: &[String]) -> Result<ImageRemoved, DockerError> {
        let options = || RemoveImageOptions { force: false, noprune: false, ..Default::default() };
        let deleted = |items: &[bollard::models::ImageDeleteResponseItem]| {
            items.iter().any(|item| item.deleted.as_deref() == Some(id))
        };
        for tag in tags {
            match self.client().inspect_image(tag).await.map_err(DockerError::from) {
                Ok(image) if image.id.as_deref() == Some(id) => {}
                Ok(_) => continue,
                Err(error) if error.status == Some(404) => continue,
                Err(error) => return Err(error),
            }
            // Untagging the last tag deletes the image itself.
            match self.client().remove_image(tag, Some(options()), None).await.map_err(DockerError::from) {
                Ok(items) if deleted(&items) => return Ok(ImageRemoved::Deleted),
                Ok(_) => {}
                Err(error) if error.status == Some(404) => {}
                Err(error) => return Err(error),
            }
        }
        match self.client().remove_image(id, Some(options()), None).await.map_err(DockerError::from) {
            Ok(items) if deleted(&items) => Ok(ImageRemoved::Deleted),
            Ok(_) => Ok(ImageRemoved::Gone),
            Err(error) if error.status == Some(404) => Ok(ImageRemoved::Gone),
            Err(error) => Err(error),
        }
    }

    /// Prunes the build cache down to `max_bytes` (`POST /build/prune`,
    /// every kind of cache record, least recently used first) and returns
    /// the engine's `SpaceReclaimed`. The size goes as `keep-storage`
    /// (API 1.41 to 1.47) and as `reserved-space` and `max-used-space`
    /// (1.48 on), which each engine reads as "keep at most this much"; an
    /// engine ignores the names it does not know. The client library knows
    /// only the newer names, so this is one plain request.
    pub(crate) async fn prune_build_cache(&self, max_bytes: u64) -> Result<u64, DockerError> {
        let not_speakable = || DockerError {
            status: None,
            message: format!(
                "pruning the build cache needs a unix or tcp DOCKER_HOST, not {}",
                self.endpoint().address
            ),
        };
        let upstream = self.endpoint().upstream().ok_or_else(not_speakable)?;
        let io = |error: std::io::Error| DockerError { status: None, message: error.to_string() };
        let (read, mut write) = upstream.connect().await.map_err(io)?;
        let target = format!(
            "/build/prune?all=1&keep-storage={max_bytes}&reserved-space={max_bytes}&max-used-space={max_bytes}"
        );
        let request =
            format!("POST {target} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        write.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Buffered::new(read);
        let http = |error: crate::net::http::HttpError| DockerError { status: None, message: error.to_string() };
        let head = answer.read_head(false).await.map_err(http)?;
        let framing = head.response_framing("POST").map_err(http)?;
        let body = answer.copy_body(framing, &mut tokio::io::sink(), true).await.map_err(http)?.unwrap_or_default();
        space_reclaimed(head.status, &body)
    }
}

/// The `SpaceReclaimed` of a prune's answer, or the engine's error.
fn space_reclaimed(status: u16, body: &[u8]) -> Result<u64, DockerError> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if status != 200 {
        let message = value.get("message").and_then(|message| message.as_str()).unwrap_or("build prune failed");
        return Err(DockerError { status: Some(status), message: message.to_string() });
    }
    value.get("SpaceReclaimed").and_then(serde_json::Value::as_u64).ok_or_else(|| DockerError {
        status: None,
        message: "the build prune's answer has no SpaceReclaimed".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_answer_gives_its_space_reclaimed_or_the_engine_error() {
        assert_eq!(space_reclaimed(200, br#"{"CachesDeleted":null,"SpaceReclaimed":1234}"#).unwrap(), 1234);
        assert!(space_reclaimed(200, b"{}").is_err());
        let error = space_reclaimed(500, br#"{"message":"builder busy"}"#).unwrap_err();
        assert_eq!((error.status, error.message.as_str()), (Some(500), "builder busy"));
    }
}
