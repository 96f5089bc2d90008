//! Key/value cache: the attention keys and values of tokens already seen.
//!
//! ICL and context distillation score many queries after one shared context; encoding the
//! context once and reusing its keys/values turns a `(C + q)²` cost per query into `q·(C + q)`.

use tch::Tensor;

/// Per layer, keys and values `[B, num_heads, P, head_dim]` for a prefix of P tokens.
#[derive(Debug)]
pub struct KvCache {
    /// `(key, value)` per decoder layer, in layer order.
    pub layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Number of cached positions P.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[2])
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batch size B of the cache.
    pub fn batch_size(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[0])
    }

    /// A batch-1 cache viewed as a batch of `batch` identical rows, without copying
    /// (for a context shared by every query of a batch).
    pub fn expand(&self, batch: i64) -> KvCache {
        let grow = |t: &Tensor| t.expand([batch, -1, -1, -1], false);
        KvCache { layers: self.layers.iter().map(|(k, v)| (grow(k), grow(v))).collect() }
    }

    /// The first `len` positions, without copying (a view).
    pub fn prefix(&self, len: i64) -> KvCache {
        KvCache { layers: self.layers.iter().map(|(k, v)| (k.narrow(2, 0, len), v.narrow(2, 0, len))).collect() }
    }

    /// A copy that shares storage with this cache (tensors are reference counted).
    pub fn shallow_clone(&self) -> KvCache {
        KvCache { layers: self.layers.iter().map(|(k, v)| (k.shallow_clone(), v.shallow_clone())).collect() }
    }
}
