//! The streaming list RPCs of KEP-5825 (StreamPodSandboxes, StreamContainers,
//! StreamContainerStats, StreamPodSandboxStats, StreamImages): the same answer as the List
//! call with the same filter, sent in chunks so that no message nears the 16 MiB limit
//! however many objects the node has. Each item is in exactly one message; the stream ends
//! after the last.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

/// Objects per message: a container with its labels, annotations and stats is a few KiB.
pub const CHUNK: usize = 256;

pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `items` as a stream of messages of at most `CHUNK` each (one empty message for none,
/// so the client sees an answer).
pub fn chunked<I, T>(items: Vec<I>, message: impl Fn(Vec<I>) -> T) -> ListStream<T>
where
    I: Send + 'static,
    T: Send + 'static,
{
    let mut messages = Vec::new();
    let mut items = items.into_iter().peekable();
    loop {
        let chunk: Vec<I> = items.by_ref().take(CHUNK).collect();
        let last = items.peek().is_none();
        if !chunk.is_empty() || messages.is_empty() {
            messages.push(Ok(message(chunk)));
        }
        if last {
            break;
        }
    }
    Box::pin(tokio_stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn every_item_once_in_chunks_and_one_message_for_none() {
        let got: Vec<Vec<usize>> = chunked((0..CHUNK * 2 + 3).collect(), |c| c)
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [CHUNK, CHUNK, 3]
        );
        assert_eq!(got.concat(), (0..CHUNK * 2 + 3).collect::<Vec<_>>());
        let none: Vec<Vec<usize>> = chunked(Vec::new(), |c| c)
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(none, [Vec::<usize>::new()]);
    }
}
