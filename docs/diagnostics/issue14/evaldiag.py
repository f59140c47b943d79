import numpy as np, jax, jax.numpy as jnp, ml_collections
from ovsnet_jax import loading, inference
from ovsnet_jax.input import shapes
import configs.smoke as S
np.set_printoptions(linewidth=220)
cfg=S.get_config()
ld=loading.load_model(cfg,'/tmp/h14_smoke2','', '/tmp/h14_smoke2/text_cache', None, progress=False)
p=ld.params
print('logit_scale exp', float(np.exp(p['logit_scale'])), 'clip_logit_scale exp', float(np.exp(p['clip_logit_scale'])))
def run(split, ens_on, n=48):
  c=ml_collections.ConfigDict(ld.config.to_dict()); c.model.ensemble.enabled=ens_on
  from ovsnet_jax.models import ovsnet
  model=ovsnet.build_model(c)
  names=shapes.class_names(split); K=len(names)
  text=dict(ld.classify(names)); text['seen']=np.asarray(shapes.seen_mask(split))
  f=jax.jit(lambda pp,x,t: inference.semantic_logits(model,pp,x,t))
  ds=shapes.ShapesSemantic(shapes.ShapesPanoptic(split,n,64,0,4))
  conf=np.zeros((K,K),int)
  for i in range(0,n,8):
    exs=[ds[j] for j in range(i,i+8)]
    x=jnp.asarray(np.stack([e['image'] for e in exs]).astype(np.float32))
    pred=np.asarray(f(p,x,text).argmax(-1)); lab=np.stack([e['sem_seg'] for e in exs])
    ok=(lab>=0)&(lab<K); np.add.at(conf,(lab[ok],pred[ok]),1)
  iou=np.diag(conf)/(conf.sum(0)+conf.sum(1)-np.diag(conf)+1e-9)
  print(f'== {split} vocab K={K} ensemble={ens_on}: pixel acc %.1f mIoU %.1f'%(100*np.trace(conf)/conf.sum(),100*iou.mean()))
  print('   rows=true cols=pred', [n[0] for n in names]); print(conf)
  return conf
run('train',False); run('train',True); run('val',False); run('val',True)
