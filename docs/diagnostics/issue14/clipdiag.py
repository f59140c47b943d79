import numpy as np, jax, jax.numpy as jnp
from ovsnet_jax.convert import open_clip as convert
from ovsnet_jax.models import clip, clip_convnext, heads
from ovsnet_jax.input import shapes
from ovsnet_jax.text import classifier
from ovsnet_jax import clip_pretraining as cp
D='/tmp/h14_cache/clip/test_tiny-359536089a05'
import ovsnet_jax.loading as L, configs.smoke as S
cfg=S.get_config(); 
_, params = L.load_clip(cfg)
names=shapes.class_names('val'); K=len(names); short=[n[0] for n in names]
text=classifier.TextClassifier.from_params('test_tiny', params['text'])(names)
E=text['embeds']; V=text['valid']
m=(E*V[...,None]).sum(1); m/=np.linalg.norm(m,axis=-1,keepdims=True)
C=m@m.T
np.set_printoptions(precision=2,suppress=True,linewidth=200)
print('class-mean text cosines (13x13):', short); print(C)
off=C[~np.eye(K,dtype=bool)]; print('offdiag mean %.3f min %.3f max %.3f'%(off.mean(),off.min(),off.max()))
# visual
vis=clip_convnext.CLIPVisual('test_tiny')
vp={'params':params['visual']}
feats_fn=jax.jit(lambda x: vis.apply(vp, cp.normalize(x)))
head_fn=jax.jit(lambda p: vis.apply(vp, p, method=clip_convnext.CLIPVisual.head))
emb_fn=jax.jit(lambda x: vis.apply(vp, cp.normalize(x), method=clip_convnext.CLIPVisual.embed_image))
def classify(e, labels, restrict=True):
  e=e/np.linalg.norm(e,axis=-1,keepdims=True)
  s=np.where(V[None], np.einsum('nd,ksd->nks',e,E), -np.inf).max(-1)
  if restrict:
    th=np.arange(K)<len(shapes.THINGS)
    s=np.where(th[None]==th[labels][:,None], s, -np.inf)
  return s.argmax(-1)
ds=shapes.ShapesPanoptic('val',50,64,0,4)
rows={'res5_gtpool':[], 'res4_gtpool':[], 'crop_global':[]}
labels=[]; imgs=[]; areas=[]
import jax.image
for i in range(50):
  ex=ds[i]; img=ex['image'][None]
  f=feats_fn(img)
  for seg in ex['segments']:
    mk=(ex['segment_ids']==seg['id']).astype(np.float32)
    labels.append(seg['category']); areas.append(mk.sum())
    for lvl,key in ((32,'res5_gtpool'),):
      mm=mk.reshape(64//lvl,lvl,64//lvl,lvl).mean((1,3))
      r=np.asarray(f['res5'][0]); pooled=(r*mm[...,None]).sum((0,1))/max(mm.sum(),1e-6)
      rows[key].append(np.asarray(head_fn(jnp.asarray(pooled))))
    # crop bbox, resize to 64, global embed (what CLIP was trained on)
    ys,xs=np.where(mk>0); y0,y1,x0,x1=ys.min(),ys.max()+1,xs.min(),xs.max()+1
    cy,cx=(y0+y1)/2,(x0+x1)/2; h=max(y1-y0,x1-x0)*1.6; h=max(h,16)
    ya,yb=int(max(0,cy-h/2)),int(min(64,cy+h/2)); xa,xb=int(max(0,cx-h/2)),int(min(64,cx+h/2))
    crop=jax.image.resize(ex['image'][ya:yb,xa:xb].astype(np.float32),(64,64,3),'linear')
    rows['crop_global'].append(np.asarray(emb_fn(crop[None]))[0])
labels=np.asarray(labels); areas=np.asarray(areas)
seen=np.asarray(shapes.seen_mask('val'))
for k,v in rows.items():
  if not v: continue
  p=classify(np.stack(v),labels)
  acc=[np.mean(p[labels==c]==c) if (labels==c).any() else np.nan for c in range(K)]
  print(f'{k}: segment zero-shot acc (things among things, stuff among stuff) per class:', dict(zip(short,np.round(np.array(acc)*100))))
  print(f'  mean seen %.1f unseen %.1f ; overall %.1f ; pred histogram %s'%(np.nanmean(np.array(acc)[seen])*100,np.nanmean(np.array(acc)[~seen])*100,100*np.mean(p==labels),np.bincount(p,minlength=K)))
print('segments', len(labels), 'median thing area px', np.median(areas[labels<8]), 'stuff', np.median(areas[labels>=8]))
