import { Embedding, Linear, Model, PositionEmbedding, Projection, RMSNorm, Residual, GatedMLP, SparseSelfAttention, SparseTensor, Tape, Trainer, init } from '../dist/index.js';
const V=256, S=+process.env.S||128, D=+process.env.D||128, H=+process.env.H||512, L=+process.env.L||2;
let seed=1;
const w=(n,d,std)=>init.normal(n,d,{std,seed:seed++});
const ones=(d)=>SparseTensor.fromArray(new Float32Array(d).fill(1),d);
const proj=(m,d)=>new Projection({weight:w(m,d,1/Math.sqrt(d))});
const lin=(m,d)=>new Linear({weight:w(m,d,1/Math.sqrt(d))});
const layers=[new Embedding(w(V,D,0.5)), new PositionEmbedding(w(S,D,0.1))];
for(let l=0;l<L;l++){
  layers.push(new Residual([new RMSNorm({gain:ones(D)}), new SparseSelfAttention({heads:4,k:process.env.K?+process.env.K:S,causal:true,mode:process.env.DENSE?'dense':'sparse',query:proj(D,D),key:proj(D,D),value:proj(D,D),output:proj(D,D)})]));
  layers.push(new Residual([new RMSNorm({gain:ones(D)}), new GatedMLP({gate:lin(H,D),up:lin(H,D),down:lin(D,H)})]));
}
layers.push(new RMSNorm({gain:ones(D)}), new Linear({weight:w(V,D,1/Math.sqrt(D))}));
const model=new Model(layers);
const tr=new Trainer(model,{lr:1e-3,clipNorm:1});
const tok=()=>Array.from({length:S+1},()=>Math.floor(Math.random()*V));
let tf=0,tb=0,ts=0;
const N=20;
for(let i=0;i<N+2;i++){
  const s=tok(); const t0=performance.now();
  const tape=new Tape(); const lg=await tape.model(model,s.slice(0,S)); const loss=tape.softmaxCrossEntropy(lg,Uint32Array.from(s.slice(1)));
  const t1=performance.now(); const g=await tape.backward(loss); const t2=performance.now(); await tr.step(g); const t3=performance.now();
  if(i>=2){tf+=t1-t0;tb+=t2-t1;ts+=t3-t2;}
}
console.log({S,D,H,L,fwd:tf/N,bwd:tb/N,step:ts/N,tokps:S*N/((tf+tb+ts)/1000)});
