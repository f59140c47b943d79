import numpy as np, jax, jax.numpy as jnp
from ovsnet_jax.models import clip_convnext
from ovsnet_jax.input import shapes
from ovsnet_jax.text import classifier
from ovsnet_jax import clip_pretraining as cp
import ovsnet_jax.loading as L, configs.smoke as S
_, params = L.load_clip(S.get_config())
vis=clip_convnext.CLIPVisual('test_tiny'); vp={'params':params['visual']}
feats_fn=jax.jit(lambda x: vis.apply(vp, cp.normalize(x)))
def collect(split,n,seed_off=0):
  ds=shapes.ShapesPanoptic(split,n,64,0,4); X={k:[] for k in ('res2','res3','res4','res5')}; y=[]
  for i in range(0,n,16):
    exs=[ds[j] for j in range(i,min(n,i+16))]
    f=feats_fn(np.stack([e['image'] for e in exs]))
    f={k:np.asarray(v) for k,v in f.items()}
    for b,ex in enumerate(exs):
      for seg in ex['segments']:
        mk=(ex['segment_ids']==seg['id']).astype(np.float32)
        for k,v in f.items():
          s=64//v.shape[1]; mm=mk.reshape(64//s,s,64//s,s).mean((1,3))
          X[k].append((v[b]*mm[...,None]).sum((0,1))/max(mm.sum(),1e-6))
        y.append(ex['segments'] and seg['category'])
  return {k:np.stack(v) for k,v in X.items()}, np.asarray(y)
Xtr,ytr=collect('train',400); Xte,yte=collect('val',100)
names=[n[0] for n in shapes.class_names('val')]; tr=[n[0] for n in shapes.class_names('train')]
yte_n=np.array([tr.index(names[c]) if names[c] in tr else -1 for c in yte])  # val->train ids; unseen -1
for k in Xtr:
  A=np.c_[Xtr[k],np.ones(len(Xtr[k]))]; mu=A.mean(0); sd=A.std(0)+1e-6; sd[-1]=1; mu[-1]=0
  Y=np.eye(8)[ytr]; W=np.linalg.solve(((A-mu)/sd).T@((A-mu)/sd)+1.0*np.eye(A.shape[1]),((A-mu)/sd).T@Y)
  B=(np.c_[Xte[k],np.ones(len(Xte[k]))]-mu)/sd; p=(B@W).argmax(-1); m=yte_n>=0
  th=m&(yte_n<5); st=m&(yte_n>=5)
  ptr=(((A-mu)/sd)@W).argmax(-1); print('   train acc %.1f'%(100*np.mean(ptr==ytr)), 'test pred hist', np.bincount(p,minlength=8), 'true hist', np.bincount(yte_n[m],minlength=8))
  print(f'{k} dim {Xtr[k].shape[1]}: GT-mask-pooled frozen-CLIP linear probe (seen classes, held-out val) acc all %.1f things %.1f (chance 20) stuff %.1f (chance 33)'%(100*np.mean(p[m]==yte_n[m]),100*np.mean(p[th]==yte_n[th]),100*np.mean(p[st]==yte_n[st])))
print('train segments',len(ytr),'test seen segments',int((yte_n>=0).sum()))
